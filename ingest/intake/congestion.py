"""The ``congestion`` point of a road segment, made as its cameras' speeds arrive.

Each road camera placed on a segment (``segment:`` in the registry) that reports
``avg_speed_kmh`` gives one line of the measurement ``congestion`` (tags road and segment;
fields index, speed_kmh, free_flow_kmh, cameras; rules/congestion.py computes them). The line is
timed at the segment's newest reading and goes through the batcher like every point, so the
spool keeps it while InfluxDB is away (ingest/pipeline.py puts it ahead of its reading: it is
durable no later than the reading that made it is acknowledged).

The state is small and per segment: each camera's newest (time, speed). A message of any other
device costs one dict lookup that misses. The state is in memory: after a restart a segment's
first points average only the cameras heard since; in a cluster, a worker sees only the cameras
of its own partitions.
"""

from __future__ import annotations

from collections import defaultdict

from devices.registry import Registry, RoadDevice
from devices.responsibility import Segment
from ingest.intake.decode import Decoded
from ingest.intake.lineprotocol import escape_key, format_field_value, series_key
from rules.congestion import congestion_index, free_flow_kmh, segment_speed

CONGESTION_MEASUREMENT = "congestion"
_CAMERAS = escape_key("cameras") + "="
_FREE_FLOW = escape_key("free_flow_kmh") + "="
_INDEX = escape_key("index") + "="
_SPEED = escape_key("speed_kmh") + "="


def cameras_by_segment(registry: Registry) -> dict[str, list[RoadDevice]]:
    """The road cameras placed on each segment (segment id → cameras, by id)."""
    found: dict[str, list[RoadDevice]] = defaultdict(list)
    for device in sorted(registry.devices.values(), key=lambda d: d.id):
        if isinstance(device, RoadDevice) and device.segment is not None:
            found[device.segment].append(device)
    return dict(found)


def segment_free_flow(segment: Segment, cameras: list[RoadDevice]) -> float | None:
    """The free-flow speed the segment's index compares against; None without one."""
    try:
        return free_flow_kmh(segment.free_flow_kmh, (c.speed_limit_kmh for c in cameras))
    except ValueError:
        return None


class _Segment:
    """One segment's state: its series key, free-flow speed and cameras' newest speeds."""

    __slots__ = ("fixed", "free_flow", "readings", "series")

    def __init__(self, series: str, free_flow: float) -> None:
        self.series = series
        self.free_flow = free_flow
        self.fixed = _FREE_FLOW + format_field_value(float(free_flow))
        # camera id → its newest (ts_ms, speed_kmh, report_interval_s): a rules.congestion
        # CameraSpeed as a plain tuple (a NamedTuple's constructor costs ten times as much)
        self.readings: dict[str, tuple[int, float, float]] = {}


class SegmentSpeeds:
    """Per road segment, its cameras' newest speeds; a ``congestion`` line per new speed."""

    def __init__(self, registry: Registry) -> None:
        # camera id → (its segment's state, its report interval)
        self._cameras: dict[str, tuple[_Segment, float]] = {}
        cameras = cameras_by_segment(registry)
        for road in registry.roads.values():
            for segment in road.segments:
                on = cameras.get(segment.id, [])
                free = segment_free_flow(segment, on)
                if not on or free is None:
                    continue
                tags = {"road": road.id, "segment": segment.id}
                state = _Segment(series_key(CONGESTION_MEASUREMENT, tags), free)
                for camera in on:
                    self._cameras[camera.id] = (state, camera.report_interval_s)

    def line(self, decoded: Decoded) -> str | None:
        """The congestion line this message makes, or None (not a placed camera's speed, or
        older than what its camera already said)."""
        found = self._cameras.get(decoded.device.id)
        if found is None:
            return None
        speed = decoded.message.__dict__.get("avg_speed_kmh")  # None for events and status
        if speed is None:
            return None
        state, interval_s = found
        device_id = decoded.device.id
        before = state.readings.get(device_id)
        ts_ms = decoded.ts_ms
        if before is not None and before[0] > ts_ms:
            return None  # late: the camera's newer speed already counts
        state.readings[device_id] = (ts_ms, float(speed), interval_s)
        now = segment_speed(state.readings.values())
        assert now is not None  # it holds this reading
        speed_kmh, cameras, newest_ms = now
        index = format_field_value(congestion_index(speed_kmh, state.free_flow))
        speed_text = format_field_value(speed_kmh)
        return (
            f"{state.series} {_CAMERAS}{cameras}i,{state.fixed},{_INDEX}{index},"
            f"{_SPEED}{speed_text} {newest_ms}"
        )
