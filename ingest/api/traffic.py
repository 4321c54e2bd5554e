"""``GET /traffic``: each road segment's congestion index now, and the road accidents of the
local day and month so far against the same periods a year earlier (同比).

The index is the newest ``congestion`` point of the segment (ingest/intake/congestion.py writes
one whenever a camera on it reports a speed) if it is at most ``FRESH`` old; the level and its
names come from rules/congestion.py. The accidents are counted by the events' own statistics
(``eventquery``: local calendar days of ``tz``, a year back by calendar date, Feb 29 → Feb 28),
in one request. A caller sees what ``/events`` shows it: an area-bound token the segments
answered for in its areas or with a camera there, and the accidents of its areas' devices.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field

from devices.kinds import Kind
from devices.registry import Registry, RoadDevice
from devices.responsibility import Road, Segment
from ingest.api.auth import Caller
from ingest.api.context import ApiContext, context
from ingest.api.errors import ERRORS, ErrorBody
from ingest.api.eventquery import (
    DEFAULT_TZ,
    EventQueryRefused,
    Scope,
    buckets,
    change_pct,
    counts_of,
    stats_statements,
    where_scope,
    zone,
)
from ingest.api.events import _allowed, _influx_failed, _query, _refused
from ingest.api.influxql import InfluxQueryError, epoch_ns, quote_ident
from ingest.api.series import influxql_rows, iso_utc
from ingest.api.tokens import Principal
from ingest.intake.congestion import CONGESTION_MEASUREMENT, cameras_by_segment, segment_free_flow
from rules.congestion import LEVEL_NAMES, CongestionLevel, level_of

router = APIRouter(prefix="/traffic", tags=["traffic"])

FRESH = timedelta(minutes=15)  # an index older than this is no longer "now": null
ACCIDENT = "accident"
_FIELDS = ("index", "speed_kmh", "free_flow_kmh", "cameras")
_ERRORS = {
    502: {"model": ErrorBody, "description": "InfluxDB failed"},
    503: {"model": ErrorBody, "description": "InfluxDB cannot be reached"},
    **ERRORS,
}


class SegmentTraffic(BaseModel):
    """One road segment and its congestion now (null when no camera spoke in 15 min)."""

    road: str = Field(description="the road's id")
    road_name: str
    road_name_en: str | None
    segment: str = Field(description="the segment's id")
    name: str
    name_en: str | None
    from_km: float
    to_km: float
    free_flow_kmh: float | None = Field(description="the segment's, else its cameras' lowest limit")
    index: float | None = Field(description="0–10, the newest within the last 15 min")
    level: CongestionLevel | None
    level_zh: str | None
    level_en: str | None
    speed_kmh: float | None = Field(description="mean of the recent cameras' average speeds")
    cameras: int | None = Field(description="cameras the index was computed from")
    time: str | None = Field(description="when the index was computed (ISO 8601, UTC)")


class AccidentPeriod(BaseModel):
    """Accidents in a local period so far, and in the same period a year earlier."""

    start: str = Field(description="local start, ISO 8601 with the zone's offset")
    count: int
    year_earlier: int
    change_pct: float | None = Field(description="null when year_earlier is 0")


class Accidents(BaseModel):
    """Road accidents today and this month so far, year on year (同比)."""

    tz: str
    today: AccidentPeriod = Field(description="the local day; a year earlier: that whole day")
    month_to_date: AccidentPeriod = Field(
        description="the 1st to today; a year earlier: the same days of that month"
    )


class Traffic(BaseModel):
    """``GET /traffic``: the segments in registry order, and the accidents."""

    segments: list[SegmentTraffic]
    accidents: Accidents


def _visible(
    registry: Registry, segment: Segment, principal: Principal, cameras: list[RoadDevice]
) -> bool:
    """Answered for inside the caller's areas (or above them), or watched by a camera there."""
    if principal.sees(a.id for a in registry.path_of(segment.area).areas):
        return True
    return any(principal.sees(a.id for a in registry.device_path(c.id).areas) for c in cameras)


def _segments(
    registry: Registry, principal: Principal
) -> list[tuple[Road, Segment, list[RoadDevice]]]:
    on = cameras_by_segment(registry)
    return [
        (road, seg, on.get(seg.id, []))
        for road in registry.roads.values()
        for seg in road.segments
        if _visible(registry, seg, principal, on.get(seg.id, []))
    ]


def latest_statement(since: datetime) -> str:
    """Each segment's newest congestion point since ``since``."""
    columns = ", ".join(quote_ident(f) for f in _FIELDS)
    return (
        f"SELECT {columns} FROM {quote_ident(CONGESTION_MEASUREMENT)} "
        f"WHERE time >= {epoch_ns(since)} GROUP BY {quote_ident('segment')} "
        "ORDER BY time DESC LIMIT 1"
    )


def _shaped(
    road: Road, seg: Segment, cameras: list[RoadDevice], row: dict[str, Any] | None
) -> SegmentTraffic:
    index = None if row is None or row.get("index") is None else float(row["index"])
    level = None if index is None else level_of(index)
    zh, en = LEVEL_NAMES[level] if level is not None else (None, None)
    speed = None if row is None or row.get("speed_kmh") is None else float(row["speed_kmh"])
    return SegmentTraffic(
        road=road.id,
        road_name=road.name,
        road_name_en=road.name_en,
        segment=seg.id,
        name=seg.name,
        name_en=seg.name_en,
        from_km=seg.from_km,
        to_km=seg.to_km,
        free_flow_kmh=segment_free_flow(seg, cameras),
        index=index,
        level=level,
        level_zh=zh,
        level_en=en,
        speed_kmh=speed,
        cameras=None if row is None or row.get("cameras") is None else int(row["cameras"]),
        time=None if row is None else iso_utc(datetime.fromtimestamp(row["time"] / 1000, UTC)),
    )


async def _accidents(ctx: ApiContext, principal: Principal, tz: str, now: datetime) -> Accidents:
    """Counted by the events' statistics: each local day of the month so far, each a year
    earlier, and the month so far a year earlier (``stats_statements``)."""
    zone_info = zone(tz)
    where = where_scope(Scope(Kind.ROAD, ACCIDENT), ctx.registry, _allowed(principal))
    local = now.astimezone(zone_info)
    month_start = datetime(local.year, local.month, 1, tzinfo=zone_info)
    days = buckets(month_start, max(now, month_start + timedelta(seconds=1)), zone_info, "day")
    statements = stats_statements(Kind.ROAD, where, days)
    counts = counts_of(await _query(ctx, ";\n".join(statements)), len(statements))
    n = len(days)
    now_counts, back, month_back = counts[:n], counts[n : 2 * n], counts[2 * n]
    month = sum(now_counts)
    return Accidents(
        tz=tz,
        today=AccidentPeriod(
            start=days[-1].start.isoformat(),
            count=now_counts[-1],
            year_earlier=back[-1],
            change_pct=change_pct(now_counts[-1], back[-1]),
        ),
        month_to_date=AccidentPeriod(
            start=days[0].start.isoformat(),
            count=month,
            year_earlier=month_back,
            change_pct=change_pct(month, month_back),
        ),
    )


@router.get(
    "",
    summary="congestion per road segment now; accidents today and this month, year on year",
    response_model=Traffic,
    responses=_ERRORS,
)
async def traffic(
    principal: Caller,
    ctx: Annotated[ApiContext, Depends(context)],
    tz: Annotated[str, Query(description="an IANA time zone", max_length=64)] = DEFAULT_TZ,
) -> Traffic:
    """Segments in the registry's order; an area-bound caller sees its own (as ``/events``)."""
    now = datetime.now(UTC)
    settings = ctx.settings
    try:
        accidents = await _accidents(ctx, principal, tz, now)
        rows = await influxql_rows(
            ctx.http, settings.influx_url, settings.influx_database, latest_statement(now - FRESH)
        )
    except EventQueryRefused as e:
        raise _refused(e) from None
    except InfluxQueryError as e:
        raise _influx_failed(e) from None
    newest = {row["segment"]: row for row in rows if row.get("segment")}
    return Traffic(
        segments=[
            _shaped(road, seg, cameras, newest.get(seg.id))
            for road, seg, cameras in _segments(ctx.registry, principal)
        ],
        accidents=accidents,
    )
