"""What every behaviour model looks like, and the conditions scenarios impose on them.

A behaviour is a small stateful object per device: given a time stamp, the conditions in force
and its own random stream, it returns one payload model. It never does I/O and never reads the
clock, so a simulated day runs in milliseconds in the unit tests.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from devices.payloads import DeviceMessage
from simulator.hydrology import WAVE_FRONT_S


class Condition(StrEnum):
    """A lasting change a scenario makes to how a device behaves."""

    FLOOD = "flood"  # torrential rain; the level climbs past warning and guarantee
    WAVE = "wave"  # a flood wave from upstream passes: up past warning, then down again
    SPILL = "spill"  # a pollutant plume: water quality worse than class V
    JAM = "jam"  # an accident's aftermath: speeds collapse and the queue grows
    SILENT = "silent"  # the device publishes nothing although it stays connected


# The conditions in force, each with the seconds of run time since it began: ramps such as the
# flood rise are written against this, so they play out the same at any reporting rate.
Conditions = Mapping[Condition, float]

# Conditions in force before they begin, with a negative time: a flood wave "begins" at a
# station when it passes the warning level there (its own over-warning comes when the water is
# expected), and its front rises for this long before that.
LEAD_S: Mapping[Condition, float] = {Condition.WAVE: WAVE_FRONT_S}

NORMAL: Conditions = {}


@dataclass(frozen=True, slots=True)
class Stamp:
    """What every message carries besides its measurements."""

    ts: int  # epoch milliseconds
    seq: int  # the device's message counter


class Behaviour(Protocol):
    """The per-device model of one kind of device."""

    def on_tick(self, stamp: Stamp, active: Conditions) -> DeviceMessage:
        """The device's regular message: its telemetry, or now and then a spontaneous event."""
        ...

    def on_script(self, event: str, stamp: Stamp, active: Conditions) -> DeviceMessage:
        """An event a scenario makes the device publish (``accident``, ``tailgating``, ...)."""
        ...
