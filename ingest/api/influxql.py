"""Time-series queries for the HTTP API, first half: validated parameters → InfluxQL.

``series`` runs the query and shapes the answer as JSON or CSV.

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
are InfluxDB's ``GROUP BY time(every) tz(tz)``: aligned in the time zone ``tz`` (default
Asia/Shanghai, so a 1 d window is a Chinese day from 00:00, not from 08:00 as UTC windows
were; an IANA name the zone database lists), empty windows present with null values (``fill(null)``;
``count`` gives 0 there, as InfluxDB does). An
area aggregated without ``group_by_device`` applies ``fn`` to all points of all the kind's
devices in the area together (the mean of every reading, not the mean of device means). A raw
area query always answers per device. Only telemetry is queryable: events have no field that
every event carries (``seq`` is optional), so counting them needs a different query.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime, timedelta
from typing import Annotated, ClassVar, Literal
from zoneinfo import available_timezones

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator, model_validator

from devices.kinds import Channel, Kind, Level
from devices.registry import Registry
from devices.units import numeric_fields
from ingest.intake.lineprotocol import measurement_of

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
DEFAULT_TZ = "Asia/Shanghai"
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
LATEST = datetime(2100, 1, 1, tzinfo=UTC)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

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
    tz: str = DEFAULT_TZ  # where windows of aggregates are aligned

    @field_validator("tz")
    @classmethod
    def _known_zone(cls, name: str) -> str:
        # Only names the zone database lists: the name goes into the query text.
        if name not in _zones():
            raise ValueError(f"no time zone {name[:64]!r}")
        return name

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


@functools.cache
def _zones() -> frozenset[str]:
    return frozenset(available_timezones())


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
    return ((moment - EPOCH) // timedelta(microseconds=1)) * 1000


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
    return (
        f"SELECT {selected} FROM {measurement} WHERE {where} GROUP BY {group} fill(null) "
        f"tz('{q.tz}')"
    )
