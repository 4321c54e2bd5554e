"""The congestion index of a road segment (交通运行指数, 0–10), from its cameras' speeds.

Chinese city traffic indexes (Beijing's DB11/T 785 and those modelled on it) report 0–10 in
five levels: 0–2 畅通 free, 2–4 基本畅通 basically free, 4–6 轻度拥堵 light, 6–8 中度拥堵
moderate, 8–10 严重拥堵 severe. Beijing computes its network index from the share of congested
mileage, which one segment watched by a camera or two does not have; what it tells the public
each level means is a travel time against free flow: basically free takes 0.2–0.5 times longer
than free flow, light 0.5–0.8, moderate 0.8–1.1, severe more than 1.1 times longer. A segment's
travel time against free flow is the inverse of its speed ratio r = speed / free-flow speed, so
those multiples are the breakpoints here, written as ratios:

    r ≥ 1          → 0    free flow
    r = 1/1.2 = 5/6  → 2    free / basically free (20 % longer)
    r = 1/1.5 = 2/3  → 4    basically free / light (50 % longer)
    r = 1/1.8 = 5/9  → 6    light / moderate (80 % longer)
    r = 1/2.1 = 10/21 → 8   moderate / severe (110 % longer)
    r ≤ 0.3        → 10   stop and go (3.3 times as long): the scale's end, our choice — the
                          public description has no upper end, and below 30 % of free flow a
                          camera's mean speed is a queue, not a speed

linear in r between them, rounded to 0.01. A road at 90 % of its free-flow speed (cars a
little under the limit) is 1.2, free. The free-flow speed is the segment's own
``free_flow_kmh`` if the registry gives one, else the lowest speed limit of its cameras (a
camera's limit is what free traffic drives there; the lowest, so a 30 km/h village stretch
is not judged by the 60 km/h at its other end).

The segment's speed is the mean of its cameras' newest ``avg_speed_kmh`` that are recent: taken
within 2 × the camera's ``report_interval_s`` of the segment's newest reading. A camera that
stopped reporting (or whose road was closed) then no longer holds the index at its last speed.

Pure: numbers and millisecond timestamps in, numbers out (ingest/intake/congestion.py keeps the
per-segment state on the ingest path; ingest/api/traffic.py answers ``GET /traffic``).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from enum import StrEnum
from typing import NamedTuple

# (ratio, index), ratio falling: the breakpoints of the module docstring.
BREAKPOINTS: tuple[tuple[float, float], ...] = (
    (1.0, 0.0),
    (1 / 1.2, 2.0),
    (1 / 1.5, 4.0),
    (1 / 1.8, 6.0),
    (1 / 2.1, 8.0),
    (0.3, 10.0),
)
RECENT_INTERVALS = 2  # a camera's reading counts while within this many report intervals


class CongestionLevel(StrEnum):
    """The five levels of the index, each two points wide."""

    FREE = "free"  # 畅通 0–2
    BASICALLY_FREE = "basically_free"  # 基本畅通 2–4
    LIGHT = "light"  # 轻度拥堵 4–6
    MODERATE = "moderate"  # 中度拥堵 6–8
    SEVERE = "severe"  # 严重拥堵 8–10


# Level → (Chinese, English) names, as the pages and the API show them.
LEVEL_NAMES: dict[CongestionLevel, tuple[str, str]] = {
    CongestionLevel.FREE: ("畅通", "free"),
    CongestionLevel.BASICALLY_FREE: ("基本畅通", "basically free"),
    CongestionLevel.LIGHT: ("轻度拥堵", "light congestion"),
    CongestionLevel.MODERATE: ("中度拥堵", "moderate congestion"),
    CongestionLevel.SEVERE: ("严重拥堵", "severe congestion"),
}
_BY_FLOOR = (
    CongestionLevel.FREE,
    CongestionLevel.BASICALLY_FREE,
    CongestionLevel.LIGHT,
    CongestionLevel.MODERATE,
    CongestionLevel.SEVERE,
)


class CameraSpeed(NamedTuple):
    """One camera's newest mean speed, when it was taken, and how often the camera reports."""

    ts_ms: int
    speed_kmh: float
    report_interval_s: float


class SegmentSpeed(NamedTuple):
    """A segment's speed: the mean over ``cameras`` recent cameras, as of ``newest_ms``."""

    speed_kmh: float
    cameras: int
    newest_ms: int


def index_of_ratio(ratio: float) -> float:
    """The index (0–10, to 0.01) of a speed ratio (current / free-flow speed)."""
    if ratio >= BREAKPOINTS[0][0]:
        return 0.0
    high_r, high_i = BREAKPOINTS[0]
    for low_r, low_i in BREAKPOINTS[1:]:
        if ratio >= low_r:
            return round(high_i + (high_r - ratio) / (high_r - low_r) * (low_i - high_i), 2)
        high_r, high_i = low_r, low_i
    return 10.0


def congestion_index(speed_kmh: float, free_flow_kmh: float) -> float:
    """The index of a segment driven at ``speed_kmh`` whose free-flow speed is ``free_flow_kmh``."""
    if free_flow_kmh <= 0:
        raise ValueError(f"a free-flow speed must be positive, not {free_flow_kmh}")
    return index_of_ratio(speed_kmh / free_flow_kmh)


def level_of(index: float) -> CongestionLevel:
    """The level an index falls in; a boundary belongs to the level above (2.0 is basically
    free), as in 0–2, 2–4, … read as [0, 2), [2, 4), …, [8, 10]."""
    return _BY_FLOOR[min(max(int(index // 2), 0), 4)]


def free_flow_kmh(segment_free_flow_kmh: float | None, speed_limits_kmh: Iterable[float]) -> float:
    """The segment's own free-flow speed, else the lowest speed limit of its cameras;
    ValueError when it has neither."""
    if segment_free_flow_kmh is not None:
        return segment_free_flow_kmh
    limits = list(speed_limits_kmh)
    if not limits:
        raise ValueError("a segment without cameras needs its own free_flow_kmh")
    return min(limits)


def segment_speed(readings: Collection[tuple[int, float, float]]) -> SegmentSpeed | None:
    """Of ``CameraSpeed``s (or plain tuples of the same), the mean of the speeds taken within
    ``RECENT_INTERVALS`` × their own report interval of the newest reading among them; None
    without readings.

    On the ingest path for every camera speed: plain loops over the few cameras of a segment
    (a generator or ``statistics.mean`` costs more than the sum here)."""
    if not readings:
        return None
    newest = -(2**63)
    for ts_ms, _, _ in readings:
        if ts_ms > newest:
            newest = ts_ms
    total, cameras = 0.0, 0
    for ts_ms, speed_kmh, interval_s in readings:
        if newest - ts_ms <= RECENT_INTERVALS * 1000 * interval_s:
            total += speed_kmh
            cameras += 1
    return SegmentSpeed(total / cameras, cameras, newest)
