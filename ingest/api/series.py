"""Time-series queries for the HTTP API, second half: run the InfluxQL (``influxql``) and
shape the answer as JSON or CSV."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import math
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
from pydantic import BaseModel, Field

from devices.kinds import Channel, Kind
from devices.units import integer_fields, unit_of
from ingest.api.influxql import (
    EPOCH,
    Every,
    Fn,
    InfluxQueryError,
    InfluxUnavailable,
    SeriesQuery,
)


class FieldUnit(BaseModel):
    """A returned field and its unit."""

    name: str
    unit: str


class Point(BaseModel):
    """One row: time (ISO 8601, UTC, ms) and each field's value (None where nothing was)."""

    time: str
    values: dict[str, float | int | None]


class Series(BaseModel):
    """The points of one device, or of the whole area when aggregated across devices."""

    device: str | None
    points: list[Point]


class SeriesResult(BaseModel):
    """The JSON answer of a time-series query."""

    kind: Kind
    device: str | None
    area: str | None
    start: str
    end: str
    every: Every | None
    every_s: int | None
    fn: Fn | None
    fields: list[FieldUnit]
    per_device: bool = Field(description="one series per device (else one for the whole query)")
    series: list[Series]
    truncated: bool = Field(description="true if a raw query hit its limit: ask again for more")


def iso_utc(moment: datetime) -> str:
    """``2026-11-19T08:00:00.000Z``: UTC, milliseconds, Z."""
    utc = moment.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def _iso_ms(epoch_ms: int) -> str:
    return iso_utc(EPOCH + timedelta(milliseconds=epoch_ms))


def _number(value: Any, as_float: bool) -> float | int | None:
    # InfluxDB's JSON writes 422.0 as 422: give float fields back as floats.
    if value is None or isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return float(value) if as_float else value


def _float_fields(q: SeriesQuery) -> frozenset[str]:
    """Fields whose values are floats in the answer: count is an integer, mean never is."""
    if q.aggregate == "count":
        return frozenset()
    if q.aggregate == "mean":
        return frozenset(q.fields)
    return frozenset(q.fields) - integer_fields(q.kind, Channel.TELEMETRY)


def shape_result(q: SeriesQuery, answer: dict[str, Any]) -> SeriesResult:
    """Turn InfluxDB's ``/query`` JSON (``epoch=ms``) for ``q`` into a SeriesResult."""
    results = answer.get("results") or [{}]
    first = results[0]
    if "error" in first:
        raise InfluxQueryError(f"InfluxDB: {first['error']}")
    as_float = _float_fields(q)
    by_device: dict[str | None, list[Point]] = {}
    rows = 0
    for raw in first.get("series", []):
        columns: list[str] = raw["columns"]
        tag_device = (raw.get("tags") or {}).get("device")
        for row in raw.get("values", []):
            record = dict(zip(columns, row, strict=True))
            rows += 1
            device = record.pop("device", None) or tag_device
            if not q.per_device:
                device = q.device
            point = Point(
                time=_iso_ms(int(record.pop("time"))),
                values={f: _number(record.get(f), f in as_float) for f in q.fields},
            )
            by_device.setdefault(device, []).append(point)
    if not by_device and not q.per_device:
        by_device[q.device] = []
    return SeriesResult(
        kind=q.kind,
        device=q.device,
        area=q.area,
        start=iso_utc(q.start),
        end=iso_utc(q.end),
        every=q.every,
        every_s=q.every_s,
        fn=q.aggregate,
        fields=[FieldUnit(name=f, unit=unit_of(q.kind, f)) for f in q.fields],
        per_device=q.per_device,
        series=[Series(device=d, points=p) for d, p in sorted(by_device.items(), key=_order)],
        truncated=q.every is None and rows >= q.limit,
    )


def _order(item: tuple[str | None, list[Point]]) -> str:
    return item[0] or ""


async def _query(
    session: aiohttp.ClientSession, influx_url: str, database: str, query: str, timeout_s: float
) -> dict[str, Any]:
    """GET ``/query`` (times as epoch ms); the first statement's result, or InfluxQueryError."""
    params = {"db": database, "q": query, "epoch": "ms"}
    try:
        async with session.get(
            f"{influx_url.rstrip('/')}/query",
            params=params,
            timeout=aiohttp.ClientTimeout(total=timeout_s),
        ) as resp:
            if resp.status != 200:
                body = (await resp.text())[:300]
                raise InfluxQueryError(f"InfluxDB /query answered HTTP {resp.status}: {body}")
            text = await resp.text()
        # Parsed in a thread: 100,000 values are ~70 ms of JSON, not to be spent on the loop
        # that also reads MQTT.
        answer: dict[str, Any] = await asyncio.to_thread(json.loads, text)
    except (aiohttp.ClientConnectionError, TimeoutError) as e:
        raise InfluxUnavailable(f"InfluxDB unreachable: {type(e).__name__}: {e}") from None
    except aiohttp.ClientError as e:
        raise InfluxQueryError(f"InfluxDB /query failed: {type(e).__name__}: {e}") from None
    return answer


async def run_series(
    session: aiohttp.ClientSession,
    influx_url: str,
    database: str,
    query: str,
    series: SeriesQuery,
    *,
    timeout_s: float = 30.0,
) -> SeriesResult:
    """Run a query from build_influxql for ``series`` on InfluxDB 1.x ``/query``.

    Shaped in a worker thread: 100,000 values took ~1 s of pure Python, which on the event
    loop stalled MQTT reading for as long (the thread gives the loop the GIL every 5 ms).
    """
    answer = await _query(session, influx_url, database, query, timeout_s)
    return await asyncio.to_thread(shape_result, series, answer)


async def influxql_rows(
    session: aiohttp.ClientSession,
    influx_url: str,
    database: str,
    query: str,
    *,
    timeout_s: float = 30.0,
) -> list[dict[str, Any]]:
    """Rows of a trusted query as dicts (``time`` in epoch ms, plus each series' tags).

    For queries the caller composed from registry values with quote_ident/quote_string, such
    as a device's newest point; user parameters go through build_influxql instead.
    """
    answer = await _query(session, influx_url, database, query, timeout_s)
    first = (answer.get("results") or [{}])[0]
    if "error" in first:
        raise InfluxQueryError(f"InfluxDB: {first['error']}")
    rows: list[dict[str, Any]] = []
    for raw in first.get("series", []):
        tags: dict[str, Any] = raw.get("tags") or {}
        for values in raw.get("values", []):
            rows.append({**tags, **dict(zip(raw["columns"], values, strict=True))})
    return rows


def to_csv(result: SeriesResult) -> str:
    """CSV: ``time[,device],<field>[<unit>]...``; device column when the answer is per device."""
    with_device = result.per_device
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    header = ["time"] + (["device"] if with_device else [])
    header += [f"{f.name}[{f.unit}]" for f in result.fields]
    writer.writerow(header)
    for block in result.series:
        for point in block.points:
            row: list[Any] = [point.time] + ([block.device] if with_device else [])
            row += [
                "" if point.values[f.name] is None else point.values[f.name] for f in result.fields
            ]
            writer.writerow(row)
    return out.getvalue()
