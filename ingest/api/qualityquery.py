"""Period assessment as data: the stations in scope, the InfluxQL of their period means, and
the report (``rules.assessment`` judges). ``quality`` answers ``GET /quality`` with it; the
``citysense quality report`` command prints it.

As in ``influxql``, no user text reaches a query: the river is looked up in the registry, the
devices are the registry's own strings, the fields are the GB 3838 table's, times are integer
nanoseconds of period boundaries computed in ``rules.assessment`` from a parsed date.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, ClassVar, Literal

import aiohttp
from pydantic import BaseModel, Field

from devices.kinds import Channel, Kind, Level
from devices.registry import Registry, RiverDevice
from devices.responsibility import River, Segment
from ingest.api.eventquery import zone
from ingest.api.influxql import QueryRefused, epoch_ns, quote_ident, quote_string
from ingest.api.series import influxql_rows
from ingest.intake.lineprotocol import measurement_of
from rules.assessment import (
    DEFAULT_TARGET,
    GroupResult,
    Period,
    PeriodKind,
    Sampled,
    StationResult,
    assess_station,
    compliance,
    compliance_by,
    parse_period,
    period_containing,
)
from rules.waterquality import FIELDS, STANDARD, WaterClass

By = Literal["station", "segment", "county"]
RULE = (
    "each parameter's mean of every sample in the period, rounded to 4 decimals, classed by "
    "GB 3838-2002 Table 1 (pH 6-9); the station's class is the worst parameter's; it meets "
    "its target when no worse; rate = meeting / assessed, stations without samples apart"
)


class QualityQueryRefused(QueryRefused):
    """A well-formed request that cannot be answered; ``code`` is stable."""

    HTTP_STATUS: ClassVar[dict[str, int]] = {
        **QueryRefused.HTTP_STATUS,
        "unknown_river": 404,
        "unknown_tz": 422,
        "bad_date": 422,
    }


class ParameterOut(BaseModel):
    """One parameter over the period."""

    mean: float = Field(description="mean of every sample in the period, to 4 decimals")
    water_class: str = Field(serialization_alias="class", description="I … V or 劣Ⅴ")
    samples: int


class StationOut(BaseModel):
    """One station over the period; ``class`` null: not assessed (no sample)."""

    device: str
    name: str
    river: str | None = Field(description="the registry's river id")
    river_name: str
    segment: str | None
    segment_name: str | None
    km: float | None
    county: str | None
    county_name: str | None
    target: str
    target_is_default: bool = Field(description=f"no target_class: class {DEFAULT_TARGET.name}")
    water_class: str | None = Field(serialization_alias="class")
    parameters: dict[str, ParameterOut]
    meets_target: bool | None
    over_target: list[str]


class GroupOut(BaseModel):
    """The compliance rate (达标率) of a group of stations."""

    id: str | None
    name: str
    name_en: str | None = None
    assessed: int
    meeting: int
    rate: float | None = Field(description="meeting / assessed in percent, to 0.1")
    not_assessed: list[str] = Field(description="stations with no sample in the period")


class PeriodOut(BaseModel):
    """The local day or month assessed."""

    kind: PeriodKind
    label: str
    tz: str
    start: str = Field(description="ISO 8601 with the zone's offset, inclusive")
    end: str = Field(description="exclusive")
    complete: bool = Field(description="false while the period has not ended")


class QualityReport(BaseModel):
    """``GET /quality``: the stations, the groups of ``by`` (none for ``station``), the total."""

    standard: str
    rule: str
    period: PeriodOut
    by: By
    river: str | None
    stations: list[StationOut]
    groups: list[GroupOut]
    total: GroupOut


def _shown(text: str) -> str:
    return repr(text[:64] + ("…" if len(text) > 64 else ""))


def _visible(registry: Registry, device: str, allowed: frozenset[str] | None) -> bool:
    return allowed is None or not allowed.isdisjoint(
        a.id for a in registry.device_path(device).areas
    )


def river_of(registry: Registry, station: RiverDevice) -> River | None:
    """The river whose segment the station is on, else the one its ``river`` names."""
    for river in registry.rivers.values():
        if station.segment is not None and any(s.id == station.segment for s in river.segments):
            return river
    return next((r for r in registry.rivers.values() if r.name == station.river), None)


def stations_in_scope(
    registry: Registry, allowed: frozenset[str] | None, river: str | None = None
) -> list[RiverDevice]:
    """The river stations the caller sees (on ``river``, a river id), in river order, then
    km, then id; ``unknown_river`` for a river unknown or with no station the caller sees."""
    order = {r: i for i, r in enumerate(registry.rivers)}
    found: list[tuple[tuple[int, float, str], RiverDevice]] = []
    for device in registry.devices.values():
        if not isinstance(device, RiverDevice) or not _visible(registry, device.id, allowed):
            continue
        on = river_of(registry, device)
        if river is not None and (on is None or on.id != river):
            continue
        key = (order.get(on.id, len(order)) if on else len(order), device.km or 0.0, device.id)
        found.append((key, device))
    if river is not None and not found:
        raise QualityQueryRefused("unknown_river", f"no river {_shown(river)} with stations")
    return [device for _, device in sorted(found, key=lambda item: item[0])]


def period_asked(kind: PeriodKind, date_text: str | None, tz: str, now: datetime) -> Period:
    """The period of ``date_text``, or the current one of ``tz``; ``bad_date``, ``unknown_tz``."""
    zone_info = zone(tz)
    if date_text is None:
        return period_containing(kind, now, zone_info)
    try:
        return parse_period(kind, date_text, zone_info)
    except ValueError as e:
        raise QualityQueryRefused("bad_date", str(e)) from None


def means_influxql(devices: Sequence[str], period: Period, everyone: bool = False) -> str:
    """Each device's mean and count of every table field over the period, one row each;
    ``everyone``: the devices are all the river stations, so no device condition."""
    columns = ", ".join(
        f"{fn}({quote_ident(f)}) AS {quote_ident(f'{fn}_{f}')}"
        for f in FIELDS
        for fn in ("mean", "count")
    )
    measurement = quote_ident(measurement_of(Kind.RIVER, Channel.TELEMETRY))
    where = f"time >= {epoch_ns(period.start)} AND time < {epoch_ns(period.end)}"
    if not everyone:
        chosen = " OR ".join(f"{quote_ident('device')} = {quote_string(d)}" for d in devices)
        where = f"({chosen}) AND {where}"
    return f"SELECT {columns} FROM {measurement} WHERE {where} GROUP BY {quote_ident('device')}"


def sampled_of(rows: list[dict[str, Any]]) -> dict[str, dict[str, Sampled]]:
    """Per device, per field: the mean and count from ``means_influxql``'s rows."""
    out: dict[str, dict[str, Sampled]] = {}
    for row in rows:
        device = row.get("device")
        if not isinstance(device, str):
            continue
        fields = out.setdefault(device, {})
        for f in FIELDS:
            mean, count = row.get(f"mean_{f}"), row.get(f"count_{f}")
            if isinstance(mean, int | float) and isinstance(count, int | float) and count > 0:
                fields[f] = Sampled(float(mean), int(count))
    return out


def _group_out(group: GroupResult, name: str, name_en: str | None = None) -> GroupOut:
    return GroupOut(
        id=group.id,
        name=name,
        name_en=name_en,
        assessed=group.assessed,
        meeting=group.meeting,
        rate=group.rate,
        not_assessed=list(group.not_assessed),
    )


def _label(water_class: WaterClass | None) -> str | None:
    return None if water_class is None else water_class.label


def _station_out(registry: Registry, station: RiverDevice, judged: StationResult) -> StationOut:
    river = river_of(registry, station)
    segment = registry.segments.get(station.segment) if station.segment else None
    county = registry.device_path(station.id).id_at(Level.COUNTY)
    return StationOut(
        device=station.id,
        name=station.name,
        river=river.id if river else None,
        river_name=station.river,
        segment=station.segment,
        segment_name=segment.name if segment else None,
        km=station.km,
        county=county,
        county_name=registry.areas[county].name if county else None,
        target=judged.target.label,
        target_is_default=judged.target_is_default,
        water_class=_label(judged.water_class),
        parameters={
            f: ParameterOut(mean=p.mean, water_class=p.water_class.label, samples=p.samples)
            for f, p in judged.parameters.items()
        },
        meets_target=judged.meets_target,
        over_target=list(judged.over_target),
    )


def _groups(registry: Registry, judged: list[StationResult], by: By) -> list[GroupOut]:
    if by == "station":
        return []
    devices = registry.devices
    if by == "segment":
        found = compliance_by(judged, lambda d: getattr(devices[d], "segment", None))
        order = list(registry.segments)
        keys = sorted(found, key=lambda k: order.index(k) if k in order else len(order))
        segments: dict[str | None, Segment] = dict(registry.segments.items())
        return [
            _group_out(
                found[k],
                segments[k].name if k in segments else "(no segment)",
                segments[k].name_en if k in segments else None,
            )
            for k in keys
        ]
    found = compliance_by(judged, lambda d: registry.device_path(d).id_at(Level.COUNTY))
    areas = registry.areas
    return [
        _group_out(
            found[k],
            areas[k].name if k in areas else "(no county)",
            areas[k].name_en if k in areas else None,
        )
        for k in sorted(found, key=lambda k: k or "~")
    ]


def build_report(
    registry: Registry,
    stations: list[RiverDevice],
    period: Period,
    tz: str,
    by: By,
    river: str | None,
    sampled: dict[str, dict[str, Sampled]],
    now: datetime,
) -> QualityReport:
    """The report of ``stations`` over ``period`` from their sampled means."""
    judged = [
        assess_station(
            s.id,
            None if s.target_class is None else WaterClass.parse(s.target_class),
            sampled.get(s.id, {}),
        )
        for s in stations
    ]
    return QualityReport(
        standard=STANDARD,
        rule=RULE,
        period=PeriodOut(
            kind=period.kind,
            label=period.label,
            tz=tz,
            start=period.start.isoformat(),
            end=period.end.isoformat(),
            complete=now >= period.end,
        ),
        by=by,
        river=river,
        stations=[_station_out(registry, s, j) for s, j in zip(stations, judged, strict=True)],
        groups=_groups(registry, judged, by),
        total=_group_out(compliance(None, judged), "全部 (all)"),
    )


async def quality_report(
    http: aiohttp.ClientSession,
    influx_url: str,
    database: str,
    registry: Registry,
    allowed: frozenset[str] | None,
    *,
    kind: PeriodKind,
    date_text: str | None,
    tz: str,
    by: By,
    river: str | None,
    now: datetime,
) -> QualityReport:
    """Validate, query InfluxDB for the period means, assess. QueryRefused for a request that
    cannot be answered; InfluxQueryError when InfluxDB fails."""
    period = period_asked(kind, date_text, tz, now)
    stations = stations_in_scope(registry, allowed, river)
    sampled: dict[str, dict[str, Sampled]] = {}
    if stations:
        everyone = len(stations) == sum(
            isinstance(d, RiverDevice) for d in registry.devices.values()
        )
        query = means_influxql([s.id for s in stations], period, everyone)
        rows = await influxql_rows(http, influx_url, database, query)
        scope = {s.id for s in stations}
        sampled = {d: v for d, v in sampled_of(rows).items() if d in scope}
    return build_report(registry, stations, period, tz, by, river, sampled, now)
