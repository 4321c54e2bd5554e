"""Time-series queries for the HTTP API: validated parameters → InfluxQL → JSON/CSV.

No user text ever reaches a query. Every name in it comes from the payload schemas or the
registry after the request's value was found there (the registry's own string is used, not
the request's), times are integer epoch nanoseconds computed from datetimes, the window is
an integer number of seconds from a fixed table, and the function is a fixed word. Quoting
and escaping are applied anyway, so a future change that lets a value through stays inert.

The API maps :class:`QueryRefused` to HTTP by ``code`` (``QueryRefused.http_status``):

=======================  ======  ===================================================
code                     status  meaning
=======================  ======  ===================================================
``unknown_device``       404     no such device, or not visible to the caller
``unknown_area``         404     no such area, or not visible to the caller
``unknown_field``        422     not a numeric telemetry field of that kind
``device_kind_mismatch`` 422     the device exists (and is visible) but is another kind
``bad_window``           422     a time outside 2000-01-01 .. 2100-01-01
``range_too_long``       400     end - start is longer than the allowed range
``too_many_rows``        400     the answer would exceed the point budget
=======================  ======  ===================================================

Malformed parameters (wrong types, unknown ``every``, ``fn`` without ``every``, naive
times, end before start) fail earlier as pydantic ``ValidationError`` → 422.

Aggregation: ``every`` alone means ``fn=mean``; ``fn`` without ``every`` is invalid. Windows
are InfluxDB's ``GROUP BY time(every)``: aligned to the Unix epoch in UTC (1 d windows start
at 00:00 UTC, 08:00 in China), empty windows present with null values (``fill(null)``;
``count`` gives 0 there, as InfluxDB does). An
area aggregated without ``group_by_device`` applies ``fn`` to all points of all the kind's
devices in the area together (the mean of every reading, not the mean of device means). A raw
area query always answers per device. Only telemetry is queryable: events have no field that
every event carries (``seq`` is optional), so counting them needs a different query.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import math
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, ClassVar, Literal

import aiohttp
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from devices.kinds import Channel, Kind, Level
from devices.registry import Registry
from devices.units import integer_fields, numeric_fields, unit_of
from ingest.lineprotocol import measurement_of

# The only windows offered; the query carries the seconds, never this text.
EVERY_SECONDS: dict[str, int] = {
    "1m": 60,
    "5m": 300,
    "10m": 600,
    "15m": 900,
    "30m": 1800,
    "1h": 3600,
    "3h": 10_800,
    "6h": 21_600,
    "12h": 43_200,
    "1d": 86_400,
}
Every = Literal["1m", "5m", "10m", "15m", "30m", "1h", "3h", "6h", "12h", "1d"]
Fn = Literal["mean", "min", "max", "sum", "count", "last"]

DEFAULT_LIMIT = 10_000
MAX_LIMIT = 100_000
DEFAULT_MAX_RANGE = timedelta(days=31)
DEFAULT_MAX_POINTS = 100_000

# The span device timestamps may have (devices/payloads.py EpochMs); also keeps nanoseconds
# inside InfluxDB's int64 time range.
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
LATEST = datetime(2100, 1, 1, tzinfo=UTC)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# A field name, device id or area id is at most 64 characters in the schemas and registry;
# anything longer is refused by validation before any lookup.
_Name = Annotated[str, Field(min_length=1, max_length=64)]


class SeriesQuery(BaseModel):
    """What the caller asks for; checked against the schemas and registry by build_influxql."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Kind
    fields: list[_Name] = Field(min_length=1, max_length=10)
    device: _Name | None = None
    area: _Name | None = None
    start: AwareDatetime
    end: AwareDatetime
    every: Every | None = None
    fn: Fn | None = None
    group_by_device: bool = False
    limit: int = Field(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT)

    @model_validator(mode="after")
    def _consistent(self) -> SeriesQuery:
        if (self.device is None) == (self.area is None):
            raise ValueError("give exactly one of device and area")
        if self.end <= self.start:
            raise ValueError("end must be after start")
        if self.fn is not None and self.every is None:
            raise ValueError("fn needs every (the aggregation window)")
        if len(set(self.fields)) != len(self.fields):
            raise ValueError("fields must not repeat")
        if self.group_by_device and self.device is not None:
            raise ValueError("group_by_device applies to area queries")
        return self

    @property
    def aggregate(self) -> Fn | None:
        """The function applied per window: ``fn``, ``mean`` if only ``every`` was given."""
        if self.every is None:
            return None
        return self.fn or "mean"

    @property
    def every_s(self) -> int | None:
        """The window in seconds."""
        return None if self.every is None else EVERY_SECONDS[self.every]

    @property
    def per_device(self) -> bool:
        """Whether the answer has one series per device (raw area queries always do)."""
        return self.area is not None and (self.group_by_device or self.every is None)


class QueryRefused(Exception):
    """A well-formed query that cannot be run; ``code`` is stable, ``message`` for people."""

    HTTP_STATUS: ClassVar[dict[str, int]] = {
        "unknown_device": 404,
        "unknown_area": 404,
        "unknown_field": 422,
        "device_kind_mismatch": 422,
        "bad_window": 422,
        "range_too_long": 400,
        "too_many_rows": 400,
    }

    def __init__(self, code: str, message: str) -> None:
        if code not in self.HTTP_STATUS:
            raise ValueError(f"unknown refusal code {code!r}")
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    @property
    def http_status(self) -> int:
        """The HTTP status the API answers with."""
        return self.HTTP_STATUS[self.code]


class InfluxQueryError(RuntimeError):
    """InfluxDB answered the query with an error (HTTP or in the result): a server fault."""


class InfluxUnavailable(InfluxQueryError):
    """InfluxDB could not be reached, or did not answer in time."""


def quote_ident(name: str) -> str:
    """An InfluxQL identifier in double quotes, backslash and quote escaped."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def quote_string(value: str) -> str:
    """An InfluxQL string literal in single quotes, backslash and quote escaped."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


def epoch_ns(moment: datetime) -> int:
    """Integer nanoseconds since the epoch, exact for any aware datetime (no float rounding)."""
    return ((moment - _EPOCH) // timedelta(microseconds=1)) * 1000


def _shown(text: str) -> str:
    # Messages name the offending value for the caller, but never a long one.
    return repr(text[:64] + ("…" if len(text) > 64 else ""))


def _visible(path_ids: set[str], allowed_areas: frozenset[str] | None) -> bool:
    return allowed_areas is None or not path_ids.isdisjoint(allowed_areas)


def _where_place(q: SeriesQuery, registry: Registry, allowed: frozenset[str] | None) -> str:
    """The tag condition selecting the device or area, from registry strings only."""
    if q.device is not None:
        device = registry.devices.get(q.device)
        if device is None or not _visible(
            {a.id for a in registry.device_path(device.id).areas}, allowed
        ):
            raise QueryRefused("unknown_device", f"no device {_shown(q.device)}")
        if device.kind is not q.kind:
            raise QueryRefused(
                "device_kind_mismatch", f"{device.id} is a {device.kind.value}, not {q.kind.value}"
            )
        return f"{quote_ident('device')} = {quote_string(device.id)}"
    assert q.area is not None
    area = registry.areas.get(q.area)
    if area is None or not _visible({a.id for a in registry.path_of(area.id).areas}, allowed):
        raise QueryRefused("unknown_area", f"no area {_shown(q.area)}")
    if area.level is not Level.CITY:
        # Each point carries its grid, village, township and county as tags named by level.
        return f"{quote_ident(area.level.value)} = {quote_string(area.id)}"
    # The city is not a tag (one city per database): it is every county under it.
    counties = sorted(c.id for c in registry.children(area.id))
    if not counties:
        # A city without counties has no devices; a tag equal to '' and not '' matches nothing.
        none = quote_string("")
        return f"({quote_ident('county')} = {none} AND {quote_ident('county')} != {none})"
    return "(" + " OR ".join(f"{quote_ident('county')} = {quote_string(c)}" for c in counties) + ")"


def _check_fields(q: SeriesQuery) -> list[str]:
    known = numeric_fields(q.kind, Channel.TELEMETRY)
    for name in q.fields:
        if name not in known:
            raise QueryRefused(
                "unknown_field",
                f"{q.kind.value} has no numeric field {_shown(name)}; it has {', '.join(known)}",
            )
    # The schema's own strings, in the caller's order.
    return [next(k for k in known if k == name) for name in q.fields]


def _check_times(q: SeriesQuery, max_range: timedelta) -> None:
    for name, moment in (("start", q.start), ("end", q.end)):
        if not EARLIEST <= moment <= LATEST:
            raise QueryRefused(
                "bad_window", f"{name} must be between {EARLIEST:%Y-%m-%d} and {LATEST:%Y-%m-%d}"
            )
    if q.end - q.start > max_range:
        raise QueryRefused(
            "range_too_long", f"the range is {q.end - q.start}; at most {max_range} is allowed"
        )


def window_count(start: datetime, end: datetime, every_s: int) -> int:
    """How many epoch-aligned windows of ``every_s`` overlap [start, end)."""
    step = every_s * 1_000_000_000
    first = epoch_ns(start) // step
    last = (epoch_ns(end) - 1) // step
    return last - first + 1


def estimate_points(q: SeriesQuery, registry: Registry) -> int:
    """Values the answer can hold at most: rows × fields (× devices for per-device windows)."""
    if q.every_s is None:
        return q.limit * len(q.fields)
    series = 1
    if q.per_device and q.area is not None:
        series = max(1, sum(1 for d in registry.devices_in(q.area) if d.kind is q.kind))
    return window_count(q.start, q.end, q.every_s) * series * len(q.fields)


def build_influxql(
    q: SeriesQuery,
    registry: Registry,
    *,
    allowed_areas: frozenset[str] | None = None,
    max_range: timedelta = DEFAULT_MAX_RANGE,
    max_points: int = DEFAULT_MAX_POINTS,
) -> str:
    """One InfluxQL SELECT for ``q``, or QueryRefused; ``allowed_areas`` None means all."""
    where_place = _where_place(q, registry, allowed_areas)
    fields = _check_fields(q)
    _check_times(q, max_range)
    points = estimate_points(q, registry)
    if points > max_points:
        raise QueryRefused(
            "too_many_rows",
            f"the answer could hold {points} values, more than {max_points}; "
            "shorten the range, widen every or ask for fewer fields",
        )
    measurement = quote_ident(measurement_of(q.kind, Channel.TELEMETRY))
    where = f"{where_place} AND time >= {epoch_ns(q.start)} AND time < {epoch_ns(q.end)}"
    fn = q.aggregate
    if fn is None:
        columns = [quote_ident(f) for f in fields]
        if q.per_device:
            # Raw area queries return the device as a column: LIMIT then caps the whole answer
            # (with GROUP BY it would cap each device's series separately).
            columns.insert(0, quote_ident("device"))
        return (
            f"SELECT {', '.join(columns)} FROM {measurement} WHERE {where} "
            f"ORDER BY time ASC LIMIT {q.limit}"
        )
    assert q.every_s is not None
    selected = ", ".join(f"{fn}({quote_ident(f)}) AS {quote_ident(f)}" for f in fields)
    group = f"time({q.every_s}s)"
    if q.per_device:
        group += f", {quote_ident('device')}"
    return f"SELECT {selected} FROM {measurement} WHERE {where} GROUP BY {group} fill(null)"


# --- running and shaping the answer ------------------------------------------------------------


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
    return iso_utc(_EPOCH + timedelta(milliseconds=epoch_ms))


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
