"""``GET /events`` and ``GET /events/stats``: events (accidents, wrong way, forced gates, …)
listed, and counted per local hour, day or month with the same bucket a year earlier.

The queries are built in ``eventquery`` from registry and schema names only; here they are
run (parsed off the event loop) and answered.
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta
from typing import Annotated, Any

import aiohttp
from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field

from devices.kinds import Kind
from ingest.api.auth import Caller
from ingest.api.context import ApiContext, context
from ingest.api.errors import ERRORS, ApiError, ErrorBody
from ingest.api.eventquery import (
    DEFAULT_TZ,
    MAX_EVENTS_LIMIT,
    BucketSize,
    EventKind,
    EventQueryRefused,
    Scope,
    buckets,
    change_pct,
    counts_of,
    event_row,
    events_influxql,
    stats_statements,
    where_scope,
    zone,
)
from ingest.api.influxql import EPOCH, InfluxQueryError, InfluxUnavailable
from ingest.api.series import iso_utc
from ingest.api.sharing import counted
from ingest.api.sharing import scope as scope_of
from ingest.api.tokens import Principal, Role

router = APIRouter(prefix="/events", tags=["events"])

_ERRORS = {
    400: {"model": ErrorBody, "description": "range too long"},
    404: {"model": ErrorBody, "description": "no such device or area (or not yours)"},
    502: {"model": ErrorBody, "description": "InfluxDB failed"},
    503: {"model": ErrorBody, "description": "InfluxDB cannot be reached"},
    **ERRORS,
}
_Name = Annotated[str | None, Query(min_length=1, max_length=64)]


class EventOut(BaseModel):
    """One event: when, which device, what, where (the area path stored with it), its fields."""

    time: str = Field(description="ISO 8601, UTC, ms")
    device: str
    kind: Kind
    type: str
    area: dict[str, str] = Field(description="grid, village, township, county → area id")
    fields: dict[str, str | int | float | bool]


class EventsResult(BaseModel):
    """``GET /events``: newest first."""

    kind: Kind
    start: str
    end: str
    events: list[EventOut]
    truncated: bool = Field(description="the limit was reached: ask again with an earlier end")


class BucketOut(BaseModel):
    """One local period's count and the same period's a year earlier."""

    start: str = Field(description="ISO 8601 with the zone's offset")
    count: int
    year_earlier: int
    change_pct: float | None = Field(description="null when year_earlier is 0")


class EventStats(BaseModel):
    """``GET /events/stats``: counts per local bucket, year on year (同比)."""

    kind: Kind
    type: str | None
    tz: str
    bucket: BucketSize
    start: str = Field(description="the first bucket's start")
    end: str = Field(description="the last bucket's end")
    buckets: list[BucketOut]
    total: int
    total_year_earlier: int = Field(description="counted over the range a year earlier")
    change_pct: float | None


async def _query(ctx: ApiContext, statements: str, timeout_s: float = 30.0) -> dict[str, Any]:
    """POST ``/query`` (a stats request is up to 801 statements: too long for a URL)."""
    settings = ctx.settings
    form = {"db": settings.influx_database, "q": statements, "epoch": "ms"}
    try:
        async with ctx.http.post(
            f"{settings.influx_url.rstrip('/')}/query",
            data=form,
            timeout=aiohttp.ClientTimeout(total=timeout_s),
        ) as resp:
            text = await resp.text()
            if resp.status != 200:
                raise InfluxQueryError(f"InfluxDB /query answered HTTP {resp.status}: {text[:300]}")
        # Parsed in a thread, as in series.py: up to 10,000 events is not for the event loop.
        answer: dict[str, Any] = await asyncio.to_thread(json.loads, text)
    except (aiohttp.ClientConnectionError, TimeoutError) as e:
        raise InfluxUnavailable(f"InfluxDB unreachable: {type(e).__name__}: {e}") from None
    except aiohttp.ClientError as e:
        raise InfluxQueryError(f"InfluxDB /query failed: {type(e).__name__}: {e}") from None
    return answer


def _rows(answer: dict[str, Any]) -> list[dict[str, Any]]:
    first = (answer.get("results") or [{}])[0]
    if "error" in first:
        raise InfluxQueryError(f"InfluxDB: {first['error']}")
    rows: list[dict[str, Any]] = []
    for raw in first.get("series") or []:
        for values in raw.get("values") or []:
            rows.append(dict(zip(raw["columns"], values, strict=True)))
    return rows


def _allowed(principal: Principal) -> frozenset[str] | None:
    return None if principal.role is Role.OPERATOR else principal.areas


def _refused(e: EventQueryRefused) -> ApiError:
    return ApiError(e.http_status, e.code, e.message)


def _influx_failed(e: InfluxQueryError) -> ApiError:
    if isinstance(e, InfluxUnavailable):
        return ApiError(503, "influx_unavailable", f"InfluxDB cannot be reached: {e}")
    return ApiError(502, "influx_error", f"InfluxDB did not answer the query: {e}")


def _shape_events(kind: Kind, rows: list[dict[str, Any]]) -> list[EventOut]:
    out = []
    for row in rows:
        r = event_row(kind, row)
        out.append(
            EventOut(
                time=iso_utc(EPOCH + timedelta(milliseconds=r["time_ms"])),
                device=r["device"] or "",
                kind=kind,
                type=r["type"] or "",
                area=r["area"],
                fields=r["fields"],
            )
        )
    return out


@router.get("", summary="events, newest first", response_model=EventsResult, responses=_ERRORS)
async def list_events(
    principal: Caller,
    request: Request,
    ctx: Annotated[ApiContext, Depends(context)],
    kind: Annotated[EventKind, Query(examples=["road"])],
    start: Annotated[datetime, Query(description="ISO 8601 with a zone, inclusive")],
    end: Annotated[datetime, Query(description="ISO 8601 with a zone, exclusive")],
    event_type: Annotated[_Name, Query(alias="type", examples=["accident"])] = None,
    area: Annotated[_Name, Query(description="an area id at any level")] = None,
    road: Annotated[_Name, Query(description="a road name of the registry (road kind)")] = None,
    device: _Name = None,
    limit: Annotated[int, Query(ge=1, le=MAX_EVENTS_LIMIT)] = 1000,
) -> EventsResult:
    """At most 31 days per request; a grid worker sees the events of its own areas only."""
    scope = Scope(Kind(kind), event_type, area, road, device)
    shared = scope_of(request, principal, f"{kind}_events")  # a department's share
    try:
        _check_aware(start, end)
        where = where_scope(scope, ctx.registry, _allowed(shared.principal))
        text = events_influxql(scope, where, start, end, limit)
        rows = _rows(await _query(ctx, text))
    except EventQueryRefused as e:
        raise _refused(e) from None
    except InfluxQueryError as e:
        raise _influx_failed(e) from None
    events = await asyncio.to_thread(_shape_events, scope.kind, rows)
    for shaped in events:
        shaped.fields = shared.strip(shaped.fields)  # fields a department's share withholds
    counted(request, len(events))
    return EventsResult(
        kind=scope.kind,
        start=iso_utc(start),
        end=iso_utc(end),
        events=events,
        truncated=len(rows) >= limit,
    )


def _check_aware(*moments: datetime) -> None:
    if any(m.tzinfo is None or m.utcoffset() is None for m in moments):
        raise EventQueryRefused("bad_window", "give start and end with a zone (Z or +08:00)")


@router.get(
    "/stats",
    summary="event counts per local hour, day or month, year on year",
    response_model=EventStats,
    responses=_ERRORS,
)
async def event_stats(
    principal: Caller,
    request: Request,
    ctx: Annotated[ApiContext, Depends(context)],
    kind: Annotated[EventKind, Query(examples=["road"])],
    start: Annotated[datetime, Query(description="ISO 8601 with a zone; its bucket is the first")],
    end: Annotated[datetime, Query(description="ISO 8601 with a zone, exclusive")],
    event_type: Annotated[_Name, Query(alias="type", examples=["accident"])] = None,
    area: Annotated[_Name, Query(description="an area id at any level")] = None,
    road: Annotated[_Name, Query(description="a road name of the registry (road kind)")] = None,
    bucket: BucketSize = "day",
    tz: Annotated[str, Query(description="an IANA time zone", max_length=64)] = DEFAULT_TZ,
) -> EventStats:
    """Buckets are whole local periods of ``tz`` (a day from local midnight); at most 400."""
    scope = Scope(Kind(kind), event_type, area, road)
    principal = scope_of(request, principal, f"{kind}_events").principal
    try:
        _check_aware(start, end)
        zone_info = zone(tz)
        where = where_scope(scope, ctx.registry, _allowed(principal))
        found = buckets(start, end, zone_info, bucket)
        statements = stats_statements(scope.kind, where, found)
        counts = counts_of(await _query(ctx, ";\n".join(statements)), len(statements))
    except EventQueryRefused as e:
        raise _refused(e) from None
    except InfluxQueryError as e:
        raise _influx_failed(e) from None
    n = len(found)
    now, back, whole_back = counts[:n], counts[n : 2 * n], counts[2 * n]
    total = sum(now)
    counted(request, n)
    return EventStats(
        kind=scope.kind,
        type=event_type,
        tz=tz,
        bucket=bucket,
        start=found[0].start.isoformat(),
        end=found[-1].end.isoformat(),
        buckets=[
            BucketOut(
                start=b.start.isoformat(), count=c, year_earlier=e, change_pct=change_pct(c, e)
            )
            for b, c, e in zip(found, now, back, strict=True)
        ],
        total=total,
        total_year_earlier=whole_back,
        change_pct=change_pct(total, whole_back),
    )
