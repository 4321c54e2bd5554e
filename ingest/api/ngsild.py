"""An NGSI-LD read API: the devices and their newest values as Smart Data Models entities.

``GET /ngsi-ld/v1/entities?type=...`` (``WaterQualityObserved``, ``WaterObserved``,
``TrafficFlowObserved``, ``Device``; ``idPattern``, ``q``, ``limit``/``offset``, ``count``),
``GET /ngsi-ld/v1/entities/{id}`` and ``GET /ngsi-ld/v1/temporal/entities/{id}?attrs=...
&timerel=between&timeAt=...&endTimeAt=...`` (one attribute's instances from InfluxDB, through
``influxql.build_influxql`` and ``series.run_series``). ``GET /ngsi-ld/context.jsonld`` is our
context document (public, like ``/docs``: it holds no data, and JSON-LD processors fetch it
without a token).

Who sees what is ``/devices``' rule: operators everything, an area-bound token the devices of
its areas; any other entity is ResourceNotFound. The answer is ``application/ld+json`` with
``@context`` in each entity, unless the client accepts only ``application/json``: then the
body has no ``@context`` and a ``Link`` header names our context (the core context is
implied), as NGSI-LD prescribes. The entities are built in ``ngsild_model``; parameters and
errors (ProblemDetails) in ``ngsild_query``.
"""

from __future__ import annotations

import asyncio
import functools
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import ValidationError

from devices.kinds import Channel, Kind
from devices.payloads import SCHEMAS
from devices.registry import AnyDevice, RoadDevice
from devices.units import integer_fields
from ingest.api.auth import Caller
from ingest.api.context import ApiContext, context
from ingest.api.influxql import (
    EPOCH,
    InfluxQueryError,
    InfluxUnavailable,
    QueryRefused,
    SeriesQuery,
    build_influxql,
    quote_ident,
    quote_string,
)
from ingest.api.ngsild_model import (
    CONTEXT_PATH,
    DEVICE,
    TYPES,
    DeviceState,
    EntityType,
    device_entity,
    observed,
    parse_urn,
    serves,
    temporal,
    with_context,
)
from ingest.api.ngsild_query import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    NgsiLdError,
    bad_request,
    id_matcher,
    not_found,
    parse_int,
    parse_q,
    parse_time,
)
from ingest.api.series import influxql_rows, run_series
from ingest.api.tokens import Principal, Role
from ingest.intake.congestion import cameras_by_segment, segment_free_flow
from ingest.intake.lineprotocol import measurement_of

router = APIRouter(tags=["ngsi-ld"])
CONTEXT_FILE = Path(__file__).parent / "ngsild_context" / "citysense-context.jsonld"
LD_JSON = "application/ld+json"
Entity = dict[str, Any]
_Param = Annotated[str | None, Query()]


@functools.cache
def context_document() -> bytes:
    """Our context document, as shipped beside this module."""
    return CONTEXT_FILE.read_bytes()


@router.get(CONTEXT_PATH, summary="the JSON-LD context of the NGSI-LD answers", tags=["ngsi-ld"])
async def context_jsonld() -> Response:
    """Our terms mapped to the Smart Data Models IRIs; public, holds no data."""
    return Response(context_document(), media_type=LD_JSON)


def _visible(ctx: ApiContext, principal: Principal, device: AnyDevice) -> bool:
    return principal.sees(a.id for a in ctx.registry.device_path(device.id).areas)


def _influx_failed(e: InfluxQueryError) -> NgsiLdError:
    if isinstance(e, InfluxUnavailable):
        return NgsiLdError(503, "InternalError", f"InfluxDB cannot be reached: {e}")
    return NgsiLdError(502, "InternalError", f"InfluxDB did not answer the query: {e}")


async def _rows(ctx: ApiContext, query: str) -> list[dict[str, Any]]:
    return await influxql_rows(
        ctx.http, ctx.settings.influx_url, ctx.settings.influx_database, query
    )


# How far back an entity's newest observation is looked for: bounds the cost of every list
# request (last() over a whole measurement reads all its shards); older is no observation.
LATEST_WITHIN = "7d"


def _where(device_id: str | None) -> str:
    recent = f"time > now() - {LATEST_WITHIN}"
    if device_id is None:
        return f" WHERE {recent}"
    return f" WHERE {quote_ident('device')} = {quote_string(device_id)} AND {recent}"


async def _latest(
    ctx: ApiContext, entity_type: EntityType, device_id: str | None
) -> dict[str, dict[str, tuple[float | int, int]]]:
    """Each device's newest value of each of the type's fields: device → field → (value, ms).

    One ``last()`` per field, grouped by device: every field keeps its own time (a river
    station sends any subset of its readings).
    """
    assert entity_type.kind is not None
    measurement = quote_ident(measurement_of(entity_type.kind, Channel.TELEMETRY))
    integers = integer_fields(entity_type.kind, Channel.TELEMETRY)
    queries = [
        f"SELECT last({quote_ident(a.field)}) AS {quote_ident(a.field)} FROM {measurement}"
        f"{_where(device_id)} GROUP BY {quote_ident('device')}"
        for a in entity_type.attrs
    ]
    answers = await asyncio.gather(*(_rows(ctx, q) for q in queries))
    out: dict[str, dict[str, tuple[float | int, int]]] = {}
    for attr, rows in zip(entity_type.attrs, answers, strict=True):
        for row in rows:
            value = row.get(attr.field)
            if isinstance(value, int | float) and not isinstance(value, bool):
                number = value if attr.field in integers else float(value)
                out.setdefault(row["device"], {})[attr.field] = (number, int(row["time"]))
    return out


async def _states(ctx: ApiContext, devices: list[AnyDevice]) -> dict[str, DeviceState]:
    """Each device's newest point of any channel, and its newest status."""
    kinds = {d.kind for d in devices}
    measurements = sorted(
        {measurement_of(k, c) for k in kinds for c in Channel if (k, c) in SCHEMAS}
    )
    device_id = devices[0].id if len(devices) == 1 else None
    queries = [
        f"SELECT * FROM {quote_ident(m)}{_where(device_id)} GROUP BY {quote_ident('device')} "
        "ORDER BY time DESC LIMIT 1"
        for m in measurements
    ]
    answers = await asyncio.gather(*(_rows(ctx, q) for q in queries))
    last: dict[str, int] = {}
    status: dict[str, tuple[bool, int]] = {}
    status_measurement = measurement_of(Kind.GATE, Channel.STATUS)
    for measurement, rows in zip(measurements, answers, strict=True):
        for row in rows:
            ms = int(row["time"])
            last[row["device"]] = max(ms, last.get(row["device"], ms))
            if measurement == status_measurement and isinstance(row.get("online"), bool):
                status[row["device"]] = (row["online"], ms)
    return {
        d.id: DeviceState(
            last.get(d.id),
            status[d.id][0] if d.id in status else None,
            status[d.id][1] if d.id in status else None,
        )
        for d in devices
    }


async def _entities(
    ctx: ApiContext, entity_type: EntityType, devices: list[AnyDevice]
) -> list[Entity]:
    """The entities of ``entity_type`` for ``devices`` (already filtered to that type)."""
    if not devices:
        return []
    if entity_type is DEVICE:
        states = await _states(ctx, devices)
        return [device_entity(d, states[d.id]) for d in devices]
    latest = await _latest(ctx, entity_type, devices[0].id if len(devices) == 1 else None)
    cameras = cameras_by_segment(ctx.registry) if entity_type.kind is Kind.ROAD else {}
    out = []
    for device in devices:
        free = None
        if isinstance(device, RoadDevice) and device.segment in ctx.registry.segments:
            segment = ctx.registry.segments[device.segment]
            free = segment_free_flow(segment, cameras.get(segment.id, []))
        entity = observed(entity_type, device, latest.get(device.id, {}), free)
        if entity is not None:
            out.append(entity)
    return out


def _render(
    request: Request, body: Entity | list[Entity], headers: dict[str, str] | None = None
) -> Response:
    """JSON-LD with ``@context`` in each entity, or plain JSON with a Link header."""
    context_url = str(request.base_url).rstrip("/") + CONTEXT_PATH
    accept = request.headers.get("accept", "")
    plain = "application/json" in accept and LD_JSON not in accept
    out_headers = dict(headers or {})
    if plain:
        out_headers["Link"] = (
            f'<{context_url}>; rel="http://www.w3.org/ns/json-ld#context"; type="{LD_JSON}"'
        )
        content: Any = body
    elif isinstance(body, list):
        content = [with_context(e, context_url) for e in body]
    else:
        content = with_context(body, context_url)
    text = json.dumps(content, ensure_ascii=False, allow_nan=False)
    media = "application/json" if plain else LD_JSON
    return Response(text, media_type=media, headers=out_headers)


@router.get("/ngsi-ld/v1/entities", summary="NGSI-LD: query entities")
async def query_entities(
    request: Request,
    principal: Caller,
    ctx: Annotated[ApiContext, Depends(context)],
    type: Annotated[str | None, Query(description="entity type(s), comma-separated")] = None,
    idPattern: _Param = None,
    q: _Param = None,
    limit: _Param = None,
    offset: _Param = None,
    count: _Param = None,
) -> Response:
    """Entities of the given types the caller may see, ordered by id, one page."""
    try:
        if not type:
            raise bad_request("type is required (WaterQualityObserved, WaterObserved, ...)")
        page_size = parse_int("limit", limit, DEFAULT_LIMIT, 0, MAX_LIMIT)
        start = parse_int("offset", offset, 0, 0, 1_000_000)
        counted = count == "true"
        if page_size == 0 and not counted:
            raise bad_request("limit=0 needs count=true")
        matches = id_matcher(idPattern) if idPattern is not None else None
        terms = parse_q(q) if q is not None else []
        found: list[Entity] = []
        for name in dict.fromkeys(t.strip() for t in type.split(",")):
            entity_type = TYPES.get(name)
            if entity_type is None:
                continue  # a type nobody has: no entities, not an error
            devices = sorted(
                (
                    d
                    for d in ctx.registry.devices.values()
                    if serves(entity_type, d) and _visible(ctx, principal, d)
                ),
                key=lambda d: d.id,
            )
            found += await _entities(ctx, entity_type, devices)
        found = [
            e
            for e in sorted(found, key=lambda e: str(e["id"]))
            if (matches is None or matches(e["id"])) and all(t.holds(e) for t in terms)
        ]
    except NgsiLdError as e:
        return e.response()
    except InfluxQueryError as e:
        return _influx_failed(e).response()
    headers = {"NGSILD-Results-Count": str(len(found))} if counted else None
    return _render(request, found[start : start + page_size], headers)


def _device_of(
    ctx: ApiContext, principal: Principal, entity_id: str
) -> tuple[EntityType, AnyDevice]:
    """The entity's type and device, if it is one of ours the caller may see; else 404."""
    parsed = parse_urn(entity_id)
    if parsed is None:
        raise not_found(entity_id)
    entity_type, device_id = parsed
    device = ctx.registry.devices.get(device_id)
    if device is None or not serves(entity_type, device) or not _visible(ctx, principal, device):
        raise not_found(entity_id)
    return entity_type, device


@router.get("/ngsi-ld/v1/entities/{entity_id}", summary="NGSI-LD: one entity")
async def retrieve_entity(
    entity_id: str,
    request: Request,
    principal: Caller,
    ctx: Annotated[ApiContext, Depends(context)],
) -> Response:
    """One entity by its URN, with its newest values."""
    try:
        entity_type, device = _device_of(ctx, principal, entity_id)
        entities = await _entities(ctx, entity_type, [device])
        if not entities:
            raise not_found(entity_id)  # a station that never measured this
    except NgsiLdError as e:
        return e.response()
    except InfluxQueryError as e:
        return _influx_failed(e).response()
    return _render(request, entities[0])


@router.get("/ngsi-ld/v1/temporal/entities/{entity_id}", summary="NGSI-LD: one attribute's history")
async def retrieve_temporal(
    entity_id: str,
    request: Request,
    principal: Caller,
    ctx: Annotated[ApiContext, Depends(context)],
    attrs: _Param = None,
    timerel: _Param = None,
    timeAt: _Param = None,
    endTimeAt: _Param = None,
) -> Response:
    """The instances of one measured attribute in a time interval, oldest first.

    ``timerel=between`` with ``timeAt`` (inclusive) and ``endTimeAt`` (exclusive), or
    ``after`` with ``timeAt`` (up to now); at most 31 days and 10,000 instances (the first
    ones), as for ``/series``.
    """
    try:
        entity_type, device = _device_of(ctx, principal, entity_id)
        if not attrs or "," in attrs:
            raise bad_request("attrs must name one attribute")
        attr = entity_type.attr(attrs)
        if attr is None:
            names = ", ".join(a.name for a in entity_type.attrs) or "none"
            raise bad_request(
                f"{entity_type.name} has no temporal attribute {attrs[:64]!r}: {names}"
            )
        start = parse_time("timeAt", timeAt)
        if timerel == "between":
            end = parse_time("endTimeAt", endTimeAt)
        elif timerel == "after":
            end = datetime.now(UTC)
        else:
            raise bad_request("timerel must be between (with endTimeAt) or after")
        assert device.kind is entity_type.kind
        try:
            query = SeriesQuery(
                kind=device.kind, fields=[attr.field], device=device.id, start=start, end=end
            )
        except ValidationError:
            raise bad_request("the interval must end after it starts") from None
        allowed = None if principal.role is Role.OPERATOR else principal.areas
        try:
            text = build_influxql(query, ctx.registry, allowed_areas=allowed)
        except QueryRefused as e:
            if e.http_status == 404:
                raise not_found(entity_id) from None
            raise bad_request(e.message) from None
        result = await run_series_points(ctx, text, query)
    except NgsiLdError as e:
        return e.response()
    except InfluxQueryError as e:
        return _influx_failed(e).response()
    return _render(request, temporal(entity_type, device, attr, result))


async def run_series_points(
    ctx: ApiContext, text: str, query: SeriesQuery
) -> list[tuple[int, float | int]]:
    """(epoch ms, value) of the query's one field, from ``series.run_series``."""
    result = await run_series(
        ctx.http, ctx.settings.influx_url, ctx.settings.influx_database, text, query
    )
    field = query.fields[0]
    out = []
    for block in result.series:
        for point in block.points:
            value = point.values.get(field)
            if value is not None:
                moment = datetime.fromisoformat(point.time.replace("Z", "+00:00"))
                out.append(((moment - EPOCH) // timedelta(milliseconds=1), value))
    return out
