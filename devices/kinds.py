"""The bounded vocabularies of the device side: kinds, channels and area levels."""

from __future__ import annotations

from enum import StrEnum


class Kind(StrEnum):
    """A device kind; also the InfluxDB measurement of its telemetry."""

    GATE = "gate"  # community access gate / vehicle barrier (门禁, 道闸)
    RIVER = "river"  # river monitoring station (河长制)
    ROAD = "road"  # road camera (路长制)


class Channel(StrEnum):
    """The last level of a device topic: what kind of message it carries."""

    TELEMETRY = "telemetry"
    EVENT = "event"
    STATUS = "status"


class Level(StrEnum):
    """Administrative levels, top down: city → county → township → village → grid."""

    CITY = "city"
    COUNTY = "county"
    TOWNSHIP = "township"
    VILLAGE = "village"
    GRID = "grid"

    @property
    def parent_level(self) -> Level | None:
        """The level directly above this one, or None for the city."""
        order = list(Level)
        i = order.index(self)
        return order[i - 1] if i else None
