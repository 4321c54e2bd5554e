"""What the engine says happened: a condition opened, was updated, or cleared."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

Action = Literal["open", "update", "clear"]


class Reason(StrEnum):
    """Why a transition happened; stable codes for storage, metrics and messages."""

    # Opening (and updating) a condition, by form.
    THRESHOLD = "threshold"
    RATE_OF_CHANGE = "rate_of_change"
    EVENT = "event"
    EVENT_COUNT = "event_count"
    WATER_QUALITY = "water_quality"
    SILENT = "silent"  # no message from the device for k × report_interval_s
    OFFLINE = "offline"  # the device (or the broker's last will) said online: false
    CHANNEL_QUIET = "channel_quiet"  # the device reports, but one of its sensor fields does not
    FLAPPING = "flapping"  # a clear held back: opened and cleared too often in the flap window
    UPSTREAM = "upstream"  # along_river: a condition upstream that the water brings here
    # Clearing.
    CLEARED = "cleared"  # the rule's clear condition holds
    EXPIRED = "expired"  # an event rule's clear_after passed with no matching event
    BELOW_COUNT = "below_count"  # fewer than count events left in the sliding window
    BACK_ONLINE = "back_online"  # the device speaks again
    CHANNEL_RESUMED = "channel_resumed"  # the quiet sensor fields report again
    PLANNED_STOP = "planned_stop"  # the device announced a planned stop (silence rule)
    SETTLED = "flap_settled"  # a flapping condition stayed clear long enough to close
    PASSED = "passed"  # along_river: upstream cleared and the expected arrival long past


@dataclass(frozen=True, slots=True)
class Transition:
    """One change of the condition of a rule on a device, on device time.

    ``action``: ``open`` when a condition starts (at most one open per rule and device),
    ``update`` when it repeats, worsens, changes cause or is held open by flap suppression,
    ``clear`` when it ends by itself. ``value`` is the triggering reading, event name, count or
    water class; ``detail`` says it in English for logs and messages.
    """

    rule_id: str
    device_id: str
    action: Action
    ts_ms: int
    value: float | str | None
    detail: str
    reason: Reason
