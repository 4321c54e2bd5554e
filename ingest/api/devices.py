"""Devices: the registry's view, filtered to what the caller may see, with last values."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field

from devices.kinds import Channel, Kind
from devices.registry import GateDevice, RiverDevice, RoadDevice
from devices.units import unit_of
from ingest.api.alerts import AREA_ID
from ingest.api.auth import Caller
from ingest.api.context import ApiContext, context
from ingest.api.errors import ERRORS, ApiError, ErrorBody, not_found
from ingest.api.influxql import InfluxQueryError, InfluxUnavailable, quote_ident, quote_string
from ingest.api.series import influxql_rows
from ingest.api.sharing import alert_filter, counted, device_filter, readings
from ingest.api.tokens import Principal
from ingest.intake.lineprotocol import measurement_of
from rules.alerts import Alert, AlertState

router = APIRouter(prefix="/devices", tags=["devices"])
AnyDevice = GateDevice | RiverDevice | RoadDevice


class PlaceRef(BaseModel):
    """One area on a device's path."""

    id: str
    name: str
    level: str


class DeviceSummary(BaseModel):
    """A device from the registry with where it is."""

    device: AnyDevice = Field(discriminator="kind")
    path: list[PlaceRef]  # grid first, up to the city


class Reading(BaseModel):
    """A channel's newest point: its time and values, numbers with their unit."""

    time_ms: int
    values: dict[str, Any]
    units: dict[str, str]


class DeviceDetail(DeviceSummary):
    """One device: registry data, newest readings per channel, last seen, open alerts."""

    last: dict[str, Reading]  # telemetry, event, status — whichever it has sent
    last_seen_ms: int | None
    # The device's clock minus ours (negative: slow), measured on the messages it stamped
    # and we read on time (ingest/intake/skew.py); null until it has sent one. Fix a clock off by
    # more than CITYSENSE_CLOCK_SKEW_WARN_S.
    clock_skew_s: float | None
    open_alerts: list[Alert]


def _summary(ctx: ApiContext, device: AnyDevice) -> DeviceSummary:
    path = ctx.registry.device_path(device.id)
    return DeviceSummary(
        device=device,
        path=[PlaceRef(id=a.id, name=a.name, level=a.level.value) for a in path.areas],
    )


def _visible(ctx: ApiContext, principal: Principal, device: AnyDevice) -> bool:
    return principal.sees(a.id for a in ctx.registry.device_path(device.id).areas)


@router.get("", summary="list devices", responses=ERRORS)
async def list_devices(
    principal: Caller,
    request: Request,
    ctx: Annotated[ApiContext, Depends(context)],
    kind: Kind | None = None,
    area: Annotated[
        str | None, Query(pattern=AREA_ID, description="an area id at any level")
    ] = None,
) -> list[DeviceSummary]:
    """Devices the caller may see, optionally of one kind or inside one area."""
    if area is not None and area not in ctx.registry.areas:
        return []
    devices = ctx.registry.devices_in(area) if area else ctx.registry.devices.values()
    shared = device_filter(request, principal)  # a department: devices of shared data sets
    found = [
        _summary(ctx, d)
        for d in devices
        if (kind is None or d.kind is kind) and _visible(ctx, principal, d) and shared(d)
    ]
    counted(request, len(found))
    return found


async def _last(ctx: ApiContext, device: AnyDevice) -> dict[str, Reading]:
    """The newest point of each of the device's measurements, from InfluxDB."""
    out: dict[str, Reading] = {}
    for channel in Channel:
        measurement = measurement_of(device.kind, channel)
        query = (
            f"SELECT * FROM {quote_ident(measurement)} WHERE {quote_ident('device')} = "
            f"{quote_string(device.id)} ORDER BY time DESC LIMIT 1"
        )
        rows = await influxql_rows(
            ctx.http, ctx.settings.influx_url, ctx.settings.influx_database, query
        )
        if not rows:
            continue
        row = rows[0]
        values = {k: v for k, v in row.items() if k != "time" and v is not None}
        out[channel.value] = Reading(
            time_ms=int(row["time"]),
            values=values,
            units={k: u for k in values if (u := _unit(device.kind, k))},
        )
    return out


def _unit(kind: Kind, name: str) -> str | None:
    try:
        return unit_of(kind, name)
    except KeyError:
        return None  # tags and text fields have none


@router.get(
    "/{device_id}",
    summary="one device with its last values and open alerts",
    responses={
        404: {"model": ErrorBody},
        502: {"model": ErrorBody},
        503: {"model": ErrorBody},
        **ERRORS,
    },
)
async def get_device(
    device_id: str,
    principal: Caller,
    ctx: Annotated[ApiContext, Depends(context)],
    request: Request,
) -> DeviceDetail:
    """Registry data, newest reading per channel (from InfluxDB), last seen, open alerts."""
    device = ctx.registry.devices.get(device_id)
    if device is None or not _visible(ctx, principal, device):
        raise not_found("device", device_id)
    if not device_filter(request, principal)(device):  # a department: of a shared data set
        raise not_found("device", device_id)
    try:
        last = await _last(ctx, device)
    except InfluxUnavailable as e:
        raise ApiError(503, "influx_unavailable", f"InfluxDB cannot be reached: {e}") from None
    except InfluxQueryError as e:
        raise ApiError(502, "influx_error", f"InfluxDB did not answer the query: {e}") from None
    alerts = await asyncio.to_thread(
        ctx.alert_store.list,
        device_id=device.id,
        state=[AlertState.OPEN, AlertState.ACKNOWLEDGED],
        limit=1000,
    )
    # A chief or a department sees the device, but only the alerts told to its posts.
    alerts = [a for a in alerts if principal.sees_alert(a.areas.values(), a.audiences)]
    last = readings(request, principal, device, last)  # a department: shared sets and fields
    alerts = list(filter(alert_filter(request, principal), alerts))
    counted(request, 1)
    summary = _summary(ctx, device)
    skew_ms = ctx.clock_skew.skew_ms(device.id) if ctx.clock_skew else None
    return DeviceDetail(
        device=summary.device,
        path=summary.path,
        last=last,
        last_seen_ms=max((r.time_ms for r in last.values()), default=None),
        clock_skew_s=None if skew_ms is None else skew_ms / 1000,
        open_alerts=alerts,
    )
