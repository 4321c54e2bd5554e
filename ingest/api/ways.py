"""Rivers and roads for the map and the river profile: ``GET /ways`` (each way's devices in
order along it, and the worst unresolved alert on it and on each of its segments) and ``GET
/rivers/{id}/profile`` (its stations upstream first with their newest water level and flood
levels).

The order is ``devices/alongway.py``'s; the alerts are the alert store's unresolved ones
(open or acknowledged, as the map's markers count them), only those the caller may see, on
devices the caller may see; the newest levels come from InfluxDB through ``series.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import Annotated, Literal

from fastapi import APIRouter, Depends
from pydantic import BaseModel

from devices.alongway import along
from devices.kinds import Channel, Kind
from devices.registry import RiverDevice, RoadDevice
from devices.responsibility import River, Road
from ingest.api.auth import Caller
from ingest.api.context import ApiContext, context
from ingest.api.errors import ERRORS, ApiError, ErrorBody
from ingest.api.influxql import InfluxQueryError, InfluxUnavailable, quote_ident, quote_string
from ingest.api.series import influxql_rows
from ingest.api.tokens import Principal, Role
from ingest.intake.lineprotocol import measurement_of
from rules.alerts import Alert
from rules.model import Severity

router = APIRouter(tags=["devices"])

WayState = Literal["none", "info", "warning", "major", "critical"]
# Least bad first: a way's state is the highest of its devices' alerts.
STATE_ORDER: tuple[WayState, ...] = ("none", "info", "warning", "major", "critical")
LEVEL = "water_level_m"


class WayDevice(BaseModel):
    """A station or camera in its place along the way."""

    id: str
    name: str
    name_en: str | None
    km: float
    lat: float
    lon: float
    segment: str
    state: WayState


class WaySegment(BaseModel):
    """A segment and the worst unresolved alert on its devices."""

    id: str
    name: str
    name_en: str | None
    from_km: float
    to_km: float
    state: WayState


class Way(BaseModel):
    """A river or road: its devices upstream (or first) first, its worst state, its segments."""

    id: str
    kind: Literal["river", "road"]
    name: str
    name_en: str | None
    state: WayState
    segments: list[WaySegment]
    devices: list[WayDevice]


class Ways(BaseModel):
    """The registry's rivers and roads, in file order."""

    rivers: list[Way]
    roads: list[Way]


class ProfileStation(BaseModel):
    """A river station's flood levels, its newest water level (null if it sent none) and the
    worst unresolved alert on it. Levels are elevations in metres."""

    id: str
    name: str
    name_en: str | None
    km: float
    segment: str
    normal_level_m: float
    warning_level_m: float
    guarantee_level_m: float
    water_level_m: float | None
    time_ms: int | None
    state: WayState


class RiverProfile(BaseModel):
    """A river's stations upstream first."""

    id: str
    name: str
    name_en: str | None
    state: WayState
    stations: list[ProfileStation]


def worst(states: Iterable[Severity | WayState]) -> WayState:
    """The worst of these severities (or states), ``none`` when there are none."""
    return STATE_ORDER[max((STATE_ORDER.index(str(s)) for s in states), default=0)]


def device_states(alerts: Iterable[Alert]) -> dict[str, WayState]:
    """Each device's worst alert among ``alerts`` (devices without one are left out)."""
    by_device: dict[str, list[Severity]] = {}
    for alert in alerts:
        by_device.setdefault(alert.device_id, []).append(alert.severity)
    return {device: worst(found) for device, found in by_device.items()}


def way_of_devices(
    way: River | Road,
    kind: Literal["river", "road"],
    devices: Iterable[RiverDevice | RoadDevice],
    states: Mapping[str, WayState],
) -> Way:
    """``way`` with ``devices`` (in order along it), each segment's and the way's worst state."""
    placed = [
        WayDevice(
            id=d.id,
            name=d.name,
            name_en=d.name_en,
            km=d.km,
            lat=d.lat,
            lon=d.lon,
            segment=d.segment,
            state=states.get(d.id, "none"),
        )
        for d in devices
        if d.km is not None and d.segment is not None
    ]
    segments = [
        WaySegment(
            id=s.id,
            name=s.name,
            name_en=s.name_en,
            from_km=s.from_km,
            to_km=s.to_km,
            state=worst(d.state for d in placed if d.segment == s.id),
        )
        for s in way.segments
    ]
    return Way(
        id=way.id,
        kind=kind,
        name=way.name,
        name_en=way.name_en,
        state=worst(s.state for s in segments),
        segments=segments,
        devices=placed,
    )


def _visible_devices(
    ctx: ApiContext, principal: Principal, way: River | Road
) -> list[RiverDevice | RoadDevice]:
    return [
        d
        for d in along(ctx.registry, way)
        if principal.sees(a.id for a in ctx.registry.device_path(d.id).areas)
    ]


async def _states(ctx: ApiContext, principal: Principal) -> dict[str, WayState]:
    """The worst unresolved alert of each device, of the alerts the caller may see."""
    unresolved = await asyncio.to_thread(ctx.alert_store.open_alerts)
    return device_states(
        a for a in unresolved if principal.sees_alert(a.areas.values(), a.audiences)
    )


@router.get("/ways", summary="rivers and roads with their devices in order", responses=ERRORS)
async def ways(principal: Caller, ctx: Annotated[ApiContext, Depends(context)]) -> Ways:
    """Every river and road with the devices the caller may see on it, in order along it
    (``km``), and the worst unresolved alert severity on it and on each of its segments
    (``none`` without one). A grid worker gets only the ways with a device in its areas."""
    states = await _states(ctx, principal)
    everything = principal.role is Role.OPERATOR

    def listed(found: Iterable[River | Road], kind: Literal["river", "road"]) -> list[Way]:
        out = []
        for way in found:
            devices = _visible_devices(ctx, principal, way)
            if devices or everything:
                out.append(way_of_devices(way, kind, devices, states))
        return out

    return Ways(
        rivers=listed(ctx.registry.rivers.values(), "river"),
        roads=listed(ctx.registry.roads.values(), "road"),
    )


async def _levels(ctx: ApiContext, stations: list[RiverDevice]) -> dict[str, tuple[float, int]]:
    """Each station's newest water level and its time (ms), one query for all."""
    if not stations:
        return {}
    where = " OR ".join(f"{quote_ident('device')} = {quote_string(s.id)}" for s in stations)
    query = (
        f"SELECT last({quote_ident(LEVEL)}) AS {quote_ident(LEVEL)} "
        f"FROM {quote_ident(measurement_of(Kind.RIVER, Channel.TELEMETRY))} "
        f"WHERE {where} GROUP BY {quote_ident('device')}"
    )
    try:
        rows = await influxql_rows(
            ctx.http, ctx.settings.influx_url, ctx.settings.influx_database, query
        )
    except InfluxUnavailable as e:
        raise ApiError(503, "influx_unavailable", f"InfluxDB cannot be reached: {e}") from None
    except InfluxQueryError as e:
        raise ApiError(502, "influx_error", f"InfluxDB did not answer the query: {e}") from None
    return {
        str(r["device"]): (float(r[LEVEL]), int(r["time"]))
        for r in rows
        if isinstance(r.get(LEVEL), int | float) and r.get("device")
    }


@router.get(
    "/rivers/{river_id}/profile",
    summary="a river's stations upstream first with their newest levels",
    responses={
        404: {"model": ErrorBody, "description": "no such river (or none of its stations yours)"},
        502: {"model": ErrorBody},
        503: {"model": ErrorBody},
        **ERRORS,
    },
)
async def river_profile(
    river_id: str, principal: Caller, ctx: Annotated[ApiContext, Depends(context)]
) -> RiverProfile:
    """The river's stations the caller may see, upstream first: km, flood levels, newest
    water level and its time (from InfluxDB), worst unresolved alert. 404 ``unknown_river``
    for a river the registry does not have, or of which a grid worker sees no station."""
    river = ctx.registry.rivers.get(river_id)
    stations = (
        [d for d in _visible_devices(ctx, principal, river) if isinstance(d, RiverDevice)]
        if river is not None
        else []
    )
    if river is None or (not stations and principal.role is not Role.OPERATOR):
        raise ApiError(404, "unknown_river", f"no river {river_id!r}")
    levels, states = await asyncio.gather(_levels(ctx, stations), _states(ctx, principal))
    way = way_of_devices(river, "river", stations, states)
    by_id = {s.id: s for s in stations}
    out = []
    for placed in way.devices:
        station = by_id[placed.id]
        level, time_ms = levels.get(station.id, (None, None))
        out.append(
            ProfileStation(
                id=station.id,
                name=station.name,
                name_en=station.name_en,
                km=placed.km,
                segment=placed.segment,
                normal_level_m=station.normal_level_m,
                warning_level_m=station.warning_level_m,
                guarantee_level_m=station.guarantee_level_m,
                water_level_m=level,
                time_ms=time_ms,
                state=placed.state,
            )
        )
    return RiverProfile(
        id=river.id, name=river.name, name_en=river.name_en, state=way.state, stations=out
    )
