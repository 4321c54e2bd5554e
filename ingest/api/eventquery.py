"""Events as data, first half: validated parameters → the devices in scope, local calendar
buckets, and InfluxQL (``events`` runs it and answers HTTP).

As in ``influxql``, no user text reaches a query: the event type is the payload schema's own
string, areas, devices and roads are looked up in the registry and its strings used, times are
integer nanoseconds. A value not found is refused before any query is built.

Buckets are local calendar periods of a time zone (a Chinese day starts at 16:00 UTC the day
before). Their boundaries are computed here with ``zoneinfo`` and each bucket is counted by its
own ``SELECT count`` over its exact UTC range (all statements in one request). InfluxDB's
``GROUP BY time(1d) tz(...)`` was not used: it cannot make months, it would make the answer
depend on InfluxDB's time-zone database and DST handling instead of ours, and one path for
hours, days and months is one path to test. The price is one statement per bucket (at most
2 × 400 + 1), each a count over an indexed time range.

Year earlier: the same local wall-clock bucket one calendar year before (Feb 29 → Feb 28, so
in a leap year Feb 28 of the year before stands for both Feb 28 and Feb 29 per bucket). The
total a year earlier is counted over its own range, [the first bucket's start a year earlier,
the last bucket's end a year earlier), so that Feb 28 is counted once there.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import cache
from typing import Any, ClassVar, Literal, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from devices.kinds import Channel, Kind, Level
from devices.payloads import SCHEMAS
from devices.registry import Registry
from ingest.api.influxql import (
    EARLIEST,
    LATEST,
    InfluxQueryError,
    QueryRefused,
    epoch_ns,
    quote_ident,
    quote_string,
)
from ingest.intake.lineprotocol import measurement_of

EventKind = Literal["gate", "road"]
BucketSize = Literal["hour", "day", "month"]
MAX_BUCKETS = 400
MAX_EVENTS_RANGE = timedelta(days=31)
MAX_EVENTS_LIMIT = 10_000
DEFAULT_TZ = "Asia/Shanghai"

# Tags of every event point (ingest/intake/lineprotocol.py): the device, its area path below
# the city, and the event type.
AREA_TAGS = tuple(level.value for level in reversed(Level) if level is not Level.CITY)
_TAGS = ("device", "event", *AREA_TAGS)
# Stored in place of the payload's ts, event and plate; ``n`` is 1 on every event point.
_NOT_STORED = frozenset({"ts", "event", "plate"})


class EventQueryRefused(QueryRefused):
    """A well-formed request that cannot be answered; ``code`` is stable (the series refusals'
    machinery, with the events' own codes)."""

    HTTP_STATUS: ClassVar[dict[str, int]] = {
        **QueryRefused.HTTP_STATUS,
        "unknown_type": 422,
        "unknown_road": 422,
        "unknown_tz": 422,
        "too_many_buckets": 422,
    }


def _shown(text: str) -> str:
    return repr(text[:64] + ("…" if len(text) > 64 else ""))


def event_types(kind: Kind) -> tuple[str, ...]:
    """The event names the payload schema allows for ``kind`` (empty if it has no events)."""
    schema = SCHEMAS.get((kind, Channel.EVENT))
    if schema is None:
        return ()
    return tuple(get_args(schema.model_fields["event"].annotation))


def event_fields(kind: Kind) -> tuple[str, ...]:
    """The fields an event point of ``kind`` may carry, as stored (``n`` left out)."""
    names = SCHEMAS[(kind, Channel.EVENT)].model_fields
    fields = [n for n in names if n not in _NOT_STORED]
    if "plate" in names:
        fields.append("plate_hash")
    return tuple(sorted(fields))


@cache
def _zone_names() -> frozenset[str]:
    return frozenset(available_timezones())


def zone(name: str) -> ZoneInfo:
    """The IANA zone ``name``, or ``unknown_tz``.

    Only names the zone database lists: ZoneInfo alone would also open files such as
    ``zone.tab`` or a directory and fail with whatever that raises.
    """
    if name not in _zone_names():
        raise EventQueryRefused("unknown_tz", f"no time zone {_shown(name)}")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise EventQueryRefused("unknown_tz", f"no time zone {_shown(name)}") from None


@dataclass(frozen=True)
class Scope:
    """What a request selects; ``where_scope`` checks it against the registry and caller."""

    kind: Kind
    event_type: str | None = None
    area: str | None = None
    road: str | None = None
    device: str | None = None


def _visible(path_ids: set[str], allowed: frozenset[str] | None) -> bool:
    return allowed is None or not path_ids.isdisjoint(allowed)


def _area_condition(registry: Registry, area_id: str) -> str:
    """Points inside an area: its level's tag, or for a city each of its counties."""
    area = registry.areas[area_id]
    if area.level is not Level.CITY:
        return f"{quote_ident(area.level.value)} = {quote_string(area.id)}"
    counties = [quote_string(c.id) for c in sorted(registry.children(area.id), key=lambda a: a.id)]
    return _any_of("county", counties)


def _any_of(tag: str, quoted: list[str]) -> str:
    if not quoted:
        # Matches nothing: a tag equal to '' and not ''.
        none = quote_string("")
        return f"({quote_ident(tag)} = {none} AND {quote_ident(tag)} != {none})"
    return "(" + " OR ".join(f"{quote_ident(tag)} = {v}" for v in quoted) + ")"


def where_scope(scope: Scope, registry: Registry, allowed: frozenset[str] | None) -> str:
    """The tag conditions for ``scope`` from registry strings only; EventQueryRefused for a
    name that is unknown (or not the caller's: the same answer, so nothing leaks)."""
    parts: list[str] = []
    if scope.event_type is not None:
        known = event_types(scope.kind)
        if scope.event_type not in known:
            raise EventQueryRefused(
                "unknown_type",
                f"{scope.kind.value} has no event {_shown(scope.event_type)}; "
                f"it has {', '.join(known)}",
            )
        parts.append(
            f"{quote_ident('event')} = {quote_string(known[known.index(scope.event_type)])}"
        )
    if scope.device is not None:
        device = registry.devices.get(scope.device)
        if device is None or not _visible(
            {a.id for a in registry.device_path(device.id).areas}, allowed
        ):
            raise EventQueryRefused("unknown_device", f"no device {_shown(scope.device)}")
        if device.kind is not scope.kind:
            raise EventQueryRefused(
                "device_kind_mismatch",
                f"{device.id} is a {device.kind.value}, not {scope.kind.value}",
            )
        parts.append(f"{quote_ident('device')} = {quote_string(device.id)}")
    if scope.area is not None:
        area = registry.areas.get(scope.area)
        if area is None or not _visible({a.id for a in registry.path_of(area.id).areas}, allowed):
            raise EventQueryRefused("unknown_area", f"no area {_shown(scope.area)}")
        # The area or one above it is the caller's: everything inside is visible.
        parts.append(_area_condition(registry, area.id))
    if scope.road is not None:
        on_road = sorted(
            d.id
            for d in registry.devices.values()
            if d.kind is Kind.ROAD
            and getattr(d, "road", None) == scope.road
            and _visible({a.id for a in registry.device_path(d.id).areas}, allowed)
        )
        if scope.kind is not Kind.ROAD or not on_road:
            raise EventQueryRefused("unknown_road", f"no road camera on {_shown(scope.road)}")
        parts.append(_any_of("device", [quote_string(d) for d in on_road]))
    if allowed is not None and scope.device is None and scope.area is None:
        # Neither a device nor an area the caller was found to see: only its own areas.
        mine = [_area_condition(registry, a) for a in sorted(allowed) if a in registry.areas]
        parts.append("(" + " OR ".join(mine) + ")" if mine else _any_of("device", []))
    return " AND ".join(parts)


def check_window(start: datetime, end: datetime) -> None:
    """Both times inside 2000 .. 2100 and in order."""
    for name, moment in (("start", start), ("end", end)):
        if not EARLIEST <= moment <= LATEST:
            raise EventQueryRefused(
                "bad_window", f"{name} must be between {EARLIEST:%Y-%m-%d} and {LATEST:%Y-%m-%d}"
            )
    if end <= start:
        raise EventQueryRefused("bad_window", "end must be after start")


def _and(*parts: str) -> str:
    return " AND ".join(p for p in parts if p)


def events_influxql(scope: Scope, where: str, start: datetime, end: datetime, limit: int) -> str:
    """The events in [start, end), newest first: tags, then the stored fields, then ``n``."""
    check_window(start, end)
    if end - start > MAX_EVENTS_RANGE:
        raise EventQueryRefused(
            "range_too_long", f"the range is {end - start}; at most {MAX_EVENTS_RANGE} is allowed"
        )
    if not 1 <= limit <= MAX_EVENTS_LIMIT:
        raise ValueError(f"limit {limit} outside 1..{MAX_EVENTS_LIMIT}")
    # ``n`` is on every event point, so every event is a row whatever else it carries.
    columns = ", ".join(quote_ident(c) for c in (*_TAGS, *event_fields(scope.kind), "n"))
    measurement = quote_ident(measurement_of(scope.kind, Channel.EVENT))
    span = f"time >= {epoch_ns(start)} AND time < {epoch_ns(end)}"
    return (
        f"SELECT {columns} FROM {measurement} WHERE {_and(where, span)} "
        f"ORDER BY time DESC LIMIT {limit}"
    )


def event_row(kind: Kind, row: dict[str, Any]) -> dict[str, Any]:
    """One answer row from an InfluxDB row (``time`` in epoch ms)."""
    fields = {f: row[f] for f in event_fields(kind) if row.get(f) is not None}
    return {
        "time_ms": int(row["time"]),
        "device": row.get("device"),
        "type": row.get("event"),
        "area": {t: row[t] for t in AREA_TAGS if row.get(t)},
        "fields": fields,
    }


# --- buckets --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bucket:
    """One local calendar period and the same period a year earlier, as UTC instants."""

    start: datetime  # aware, in the bucket's zone
    end: datetime
    earlier_start: datetime
    earlier_end: datetime


def _local(day: date, tz: ZoneInfo) -> datetime:
    # Local midnight. Where a zone skips midnight (a DST change at 00:00), fold=0 reads it
    # with the offset before the change: the instant of the change itself, the day's start.
    return datetime.combine(day, time(0), tzinfo=tz)


def year_back(day: date) -> date:
    """The same calendar date a year earlier; Feb 29 → Feb 28."""
    try:
        return day.replace(year=day.year - 1)
    except ValueError:
        return day.replace(year=day.year - 1, day=28)


def _next_month(day: date) -> date:
    return date(day.year + (day.month == 12), day.month % 12 + 1, 1)


def _hour_back(moment: datetime) -> datetime:
    # The same wall-clock hour (and fold) a year earlier, read again in the zone.
    local = moment.replace(tzinfo=None)
    earlier = datetime.combine(year_back(local.date()), moment.time())  # time() keeps fold
    return earlier.replace(tzinfo=moment.tzinfo).astimezone(UTC)


def _hours(start: datetime, end: datetime, tz: ZoneInfo) -> Iterator[Bucket]:
    # Hours step in UTC from the local hour holding ``start``: through a DST change the local
    # clock repeats or skips an hour, but every bucket is one real hour.
    first = start.astimezone(tz).replace(minute=0, second=0, microsecond=0)
    moment = first.astimezone(UTC)
    while moment < end:
        local = moment.astimezone(tz)
        back = _hour_back(local)
        # Arithmetic in UTC: an aware datetime in a zone adds wall-clock time, not real time.
        hour = timedelta(hours=1)
        yield Bucket(
            local, (moment + hour).astimezone(tz), back.astimezone(tz), (back + hour).astimezone(tz)
        )
        moment += timedelta(hours=1)


def _periods(start: datetime, end: datetime, tz: ZoneInfo, size: BucketSize) -> Iterator[Bucket]:
    day = start.astimezone(tz).date()
    if size == "month":
        day = day.replace(day=1)
    step = _next_month if size == "month" else (lambda d: d + timedelta(days=1))
    while _local(day, tz) < end:
        following = step(day)
        # Back a year by calendar date, then local midnight: 23 or 25 hours where DST changed.
        # The end is the period after the earlier start, not the end moved back: Feb 28, 2028
        # ends on Feb 29, whose year-back is Feb 28, 2027 — an empty day.
        earlier = year_back(day)
        yield Bucket(
            _local(day, tz).astimezone(UTC).astimezone(tz),
            _local(following, tz).astimezone(UTC).astimezone(tz),
            _local(earlier, tz),
            _local(step(earlier), tz),
        )
        day = following


def buckets(start: datetime, end: datetime, tz: ZoneInfo, size: BucketSize) -> list[Bucket]:
    """The local periods of ``size`` overlapping [start, end), whole: the first holds
    ``start``, the last holds the instant before ``end``. At most MAX_BUCKETS."""
    check_window(start, end)
    found: list[Bucket] = []
    made = _hours(start, end, tz) if size == "hour" else _periods(start, end, tz, size)
    for bucket in made:
        if len(found) == MAX_BUCKETS:
            raise EventQueryRefused(
                "too_many_buckets",
                f"more than {MAX_BUCKETS} {size} buckets; shorten the range or widen the bucket",
            )
        found.append(bucket)
    return found


def count_statement(kind: Kind, where: str, start: datetime, end: datetime) -> str:
    """One count of the events in [start, end)."""
    measurement = quote_ident(measurement_of(kind, Channel.EVENT))
    span = f"time >= {epoch_ns(start)} AND time < {epoch_ns(end)}"
    return f"SELECT count({quote_ident('n')}) FROM {measurement} WHERE {_and(where, span)}"


def stats_statements(kind: Kind, where: str, found: list[Bucket]) -> list[str]:
    """Each bucket's count, then each bucket's a year earlier, then the whole year earlier."""
    now = [count_statement(kind, where, b.start, b.end) for b in found]
    back = [count_statement(kind, where, b.earlier_start, b.earlier_end) for b in found]
    whole = count_statement(kind, where, found[0].earlier_start, found[-1].earlier_end)
    return [*now, *back, whole]


def counts_of(answer: dict[str, Any], statements: int) -> list[int]:
    """Each statement's count from InfluxDB's ``/query`` JSON (0 where no point matched)."""
    counts = [0] * statements
    for i, result in enumerate(answer.get("results") or []):
        if "error" in result:
            raise InfluxQueryError(f"InfluxDB: {result['error']}")
        index = int(result.get("statement_id", i))
        for series in result.get("series") or []:
            columns: list[str] = series["columns"]
            for values in series.get("values") or []:
                counts[index] += int(values[columns.index("count")] or 0)
    return counts


def change_pct(now: int, earlier: int) -> float | None:
    """Percent change from a year earlier, to 0.1; None when there was nothing then."""
    if earlier == 0:
        return None
    return round((now - earlier) * 100 / earlier, 1)
