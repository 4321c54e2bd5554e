"""Stations and cameras in order along their river or road, and how long a flood wave takes from
one point of a river to another (docs/rules.md "Along the river").

A device's place on its way is its ``km`` (downstream along a river, from the start of a road);
a river segment's ``travel_min`` is the time a flood wave (or a pollutant) takes through the
whole segment, from the hydrology office's routing. Between two points the travel time is each
segment's time in proportion to the stretch of it covered: a wave travels evenly within a
segment, at its own speed in each.
"""

from __future__ import annotations

from dataclasses import dataclass

from devices.registry import Registry, RiverDevice, RoadDevice
from devices.responsibility import River, Road

MINUTE_MS = 60_000


@dataclass(frozen=True, slots=True)
class Downstream:
    """A station downstream of another: how far, and when the water gets there."""

    device_id: str
    km: float  # its own place on the river
    distance_km: float  # from the upstream station
    travel_ms: int  # how long the water takes from the upstream station


def way_of(registry: Registry, device_id: str) -> River | Road | None:
    """The river or road a station or camera is placed on (by its segment), if any."""
    device = registry.devices.get(device_id)
    segment = getattr(device, "segment", None)
    if segment is None:
        return None
    ways: list[River | Road] = [*registry.rivers.values(), *registry.roads.values()]
    return next((w for w in ways if any(s.id == segment for s in w.segments)), None)


def along(registry: Registry, way: River | Road) -> list[RiverDevice | RoadDevice]:
    """The devices placed on ``way`` (a segment of it and a ``km``), upstream (or first) first."""
    ids = {s.id for s in way.segments}
    placed = [
        d
        for d in registry.devices.values()
        if isinstance(d, RiverDevice | RoadDevice) and d.segment in ids and d.km is not None
    ]
    return sorted(placed, key=lambda d: (d.km, d.id))


def travel_ms(river: River, from_km: float, to_km: float) -> int | None:
    """How long water takes from ``from_km`` down to ``to_km`` (not before it), or None when a
    segment on the way has no ``travel_min`` or the stretch leaves the segments (a gap)."""
    if to_km < from_km:
        return None
    total, covered = 0.0, 0.0
    for seg in river.segments:
        low, high = max(from_km, seg.from_km), min(to_km, seg.to_km)
        if high <= low:
            continue
        if seg.travel_min is None:
            return None
        total += (high - low) / (seg.to_km - seg.from_km) * seg.travel_min
        covered += high - low
    if covered < (to_km - from_km) - 1e-9:
        return None
    return round(total * MINUTE_MS)


def downstream(registry: Registry, device_id: str, within_ms: int) -> list[Downstream]:
    """The stations below ``device_id`` on its river that the water reaches within
    ``within_ms``, nearest first; none if it is not placed on a river or times are missing."""
    device = registry.devices.get(device_id)
    river = way_of(registry, device_id)
    if not isinstance(device, RiverDevice) or not isinstance(river, River) or device.km is None:
        return []
    out: list[Downstream] = []
    for other in along(registry, river):
        if other.id == device_id or other.km is None or other.km <= device.km:
            continue
        ms = travel_ms(river, device.km, other.km)
        if ms is None or ms > within_ms:
            continue
        out.append(Downstream(other.id, other.km, round(other.km - device.km, 3), ms))
    return out
