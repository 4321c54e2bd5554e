"""The things a device's timeline tells it to do."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Tick:
    """A regular message on the device's own schedule: telemetry or a spontaneous event."""


@dataclass(frozen=True, slots=True)
class Emit:
    """A scenario's event, published on top of the regular schedule."""

    event: str


@dataclass(frozen=True, slots=True)
class Drop:
    """Lose the connection without DISCONNECT, so the broker publishes the last will."""


Action = Tick | Emit | Drop

# A timeline entry: seconds since the run started, and what to do then.
Timed = tuple[float, Action]
