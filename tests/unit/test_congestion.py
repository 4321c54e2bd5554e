"""The congestion index (rules/congestion.py) and the ingest path's per-segment state
(ingest/intake/congestion.py): the breakpoints, the levels, the mean of recent cameras, stale
and late readings, and the line it writes."""

from __future__ import annotations

import pytest

from devices.kinds import Channel, Kind
from devices.payloads import RoadEvent, RoadTelemetry
from devices.registry import Registry, RoadDevice
from ingest.intake.congestion import SegmentSpeeds, cameras_by_segment
from ingest.intake.decode import Decoded
from rules.congestion import (
    LEVEL_NAMES,
    CameraSpeed,
    CongestionLevel,
    congestion_index,
    free_flow_kmh,
    index_of_ratio,
    level_of,
    segment_speed,
)

MINE, SAME_ROAD = "road-dx-0001", "road-dx-0002"  # both on G207's Daxiang segment
MIN_MS = 60_000


@pytest.mark.parametrize(
    ("ratio", "index"),
    [
        (1.5, 0.0),  # faster than free flow is free flow
        (1.0, 0.0),
        (0.9, 1.2),  # a little under the limit: free
        (1 / 1.2, 2.0),  # travel 20 % longer
        (0.75, 3.0),
        (1 / 1.5, 4.0),  # 50 % longer
        (0.6, 5.2),
        (1 / 1.8, 6.0),  # 80 % longer
        (1 / 2.1, 8.0),  # 110 % longer
        (0.4, 8.86),
        (0.3, 10.0),
        (0.1, 10.0),
        (0.0, 10.0),
    ],
)
def test_breakpoints_and_linear_between(ratio: float, index: float) -> None:
    assert index_of_ratio(ratio) == pytest.approx(index, abs=0.005)


def test_index_falls_as_speed_rises() -> None:
    indexes = [index_of_ratio(r / 100) for r in range(0, 121)]
    assert indexes == sorted(indexes, reverse=True)
    assert congestion_index(30.0, 60.0) == index_of_ratio(0.5)
    with pytest.raises(ValueError):
        congestion_index(30.0, 0.0)


@pytest.mark.parametrize(
    ("index", "level", "zh"),
    [
        (0.0, CongestionLevel.FREE, "畅通"),
        (1.99, CongestionLevel.FREE, "畅通"),
        (2.0, CongestionLevel.BASICALLY_FREE, "基本畅通"),
        (4.5, CongestionLevel.LIGHT, "轻度拥堵"),
        (6.0, CongestionLevel.MODERATE, "中度拥堵"),
        (8.0, CongestionLevel.SEVERE, "严重拥堵"),
        (10.0, CongestionLevel.SEVERE, "严重拥堵"),
    ],
)
def test_levels_with_their_names(index: float, level: CongestionLevel, zh: str) -> None:
    assert level_of(index) is level
    assert LEVEL_NAMES[level][0] == zh


def test_free_flow_is_the_segments_own_else_the_lowest_limit() -> None:
    assert free_flow_kmh(55.0, [60.0, 80.0]) == 55.0
    assert free_flow_kmh(None, [80.0, 60.0, 70.0]) == 60.0
    with pytest.raises(ValueError):
        free_flow_kmh(None, [])


def test_segment_speed_is_the_mean_of_recent_cameras() -> None:
    assert segment_speed([]) is None
    both = segment_speed([CameraSpeed(10 * MIN_MS, 40.0, 60), CameraSpeed(11 * MIN_MS, 20.0, 60)])
    assert both == (30.0, 2, 11 * MIN_MS)
    # Exactly 2 report intervals behind the newest still counts; a millisecond more does not.
    edge = [CameraSpeed(0, 40.0, 60), CameraSpeed(2 * MIN_MS, 20.0, 60)]
    assert segment_speed(edge) == (30.0, 2, 2 * MIN_MS)
    stale = [CameraSpeed(0, 40.0, 60), CameraSpeed(2 * MIN_MS + 1, 20.0, 60)]
    assert segment_speed(stale) == (20.0, 1, 2 * MIN_MS + 1)
    # Each camera by its own interval: a 5-minute camera 8 minutes behind still counts.
    mixed = [CameraSpeed(0, 50.0, 300), CameraSpeed(8 * MIN_MS, 10.0, 60)]
    assert segment_speed(mixed) == (30.0, 2, 8 * MIN_MS)


# --- the ingest path's state --------------------------------------------------------------


def telemetry(
    registry: Registry, device: str, ts_ms: int, speed: float | None, seq: int = 1
) -> Decoded:
    message = RoadTelemetry(ts=ts_ms, seq=seq, vehicle_count=5, avg_speed_kmh=speed)
    return Decoded(Kind.ROAD, Channel.TELEMETRY, registry.devices[device], message, ts_ms)


def fields_of(line: str) -> tuple[str, dict[str, str], int]:
    series, fields, ts = line.split(" ")
    return series, dict(f.split("=", 1) for f in fields.split(",")), int(ts)


def test_a_line_per_speed_with_the_recent_cameras_of_its_segment(registry: Registry) -> None:
    first, second = registry.devices[MINE], registry.devices[SAME_ROAD]
    assert isinstance(first, RoadDevice) and isinstance(second, RoadDevice)
    assert first.segment == second.segment == "g207-dx"
    free = min(first.speed_limit_kmh, second.speed_limit_kmh)
    speeds = SegmentSpeeds(registry)
    base = 1_800_000_000_000

    one = speeds.line(telemetry(registry, MINE, base, 35.0))
    assert one is not None
    series, fields, ts = fields_of(one)
    assert series == "congestion,road=g207,segment=g207-dx" and ts == base
    assert fields == {
        "cameras": "1i",
        "free_flow_kmh": f"{free:g}",
        "index": repr(congestion_index(35.0, free)),
        "speed_kmh": "35",  # a float: line protocol writes 35.0 as 35
    }
    two = speeds.line(telemetry(registry, SAME_ROAD, base + MIN_MS, 21.0))
    assert two is not None
    _, fields, ts = fields_of(two)
    assert ts == base + MIN_MS and fields["cameras"] == "2i"
    assert float(fields["speed_kmh"]) == 28.0
    assert float(fields["index"]) == congestion_index(28.0, free)
    # MINE is silent for more than 2 intervals: SAME_ROAD alone.
    three = speeds.line(telemetry(registry, SAME_ROAD, base + 3 * MIN_MS + 1, 56.0))
    assert three is not None
    _, fields, _ = fields_of(three)
    assert fields["cameras"] == "1i" and float(fields["speed_kmh"]) == 56.0
    assert float(fields["index"]) == congestion_index(56.0, free)
    # A late reading of MINE (older than its own newest) changes nothing.
    assert speeds.line(telemetry(registry, MINE, base - MIN_MS, 5.0)) is None
    # No speed, an event, a camera elsewhere: other lines or none.
    assert speeds.line(telemetry(registry, MINE, base + 4 * MIN_MS, None)) is None
    event = RoadEvent(ts=base, seq=9, event="accident", speed_kmh=3.0)
    accident = Decoded(Kind.ROAD, Channel.EVENT, first, event, base)
    assert speeds.line(accident) is None
    river = next(d for d in registry.devices.values() if d.kind is Kind.RIVER)
    assert speeds.line(Decoded(Kind.RIVER, Channel.TELEMETRY, river, event, base)) is None


def test_every_placed_camera_has_a_segment_state(registry: Registry) -> None:
    placed = {c.id for cams in cameras_by_segment(registry).values() for c in cams}
    assert placed and placed == {
        d.id for d in registry.devices.values() if isinstance(d, RoadDevice) and d.segment
    }
    speeds = SegmentSpeeds(registry)
    for device in sorted(placed):
        line = speeds.line(telemetry(registry, device, 1_800_000_000_000, 20.0))
        assert line is not None and line.startswith("congestion,road=")
