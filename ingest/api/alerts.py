"""Alerts: list and filter, one with its history, acknowledge, resolve, and a live stream."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.background import BackgroundTask

from ingest.alerts.feed import Change
from ingest.alerts.store import AlertNotFound
from ingest.api.auth import Caller
from ingest.api.context import ApiContext, context
from ingest.api.errors import ERRORS, ApiError, ErrorBody, not_found
from ingest.api.ratelimit import WriteCaller
from ingest.api.sharing import counted, scope
from ingest.api.tokens import Principal, Role
from rules.alerts import (
    Alert,
    AlertEvent,
    AlertState,
    InvalidTransition,
    ReservedActor,
    Severity,
)
from rules.audiences import area_of

router = APIRouter(prefix="/alerts", tags=["alerts"])
KEEPALIVE_S = 15.0  # a comment line so proxies and phones keep an idle stream open
MAX_DEPTH = 100_000  # the most alerts of one area read to find those told to a post
RECHECK_S = 2.0  # how often an open stream checks its token is still valid
AREA_ID = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class AlertDetail(BaseModel):
    """One alert and everything that happened to it, oldest first."""

    alert: Alert
    history: list[AlertEvent]


class ActionBody(BaseModel):
    """An acknowledgement or resolution; the actor is the token's name."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"note": "on my way"}]}
    )

    note: Annotated[str, Field(max_length=500)] | None = None


class Changed(BaseModel):
    """The alert after the change, and the history row recorded."""

    alert: Alert
    event: AlertEvent


def _ms(moment: datetime | None) -> int | None:
    return None if moment is None else int(moment.timestamp() * 1000)


def _visible(principal: Principal, alert: Alert) -> bool:
    return principal.sees_alert(alert.areas.values(), alert.audiences)


@dataclass(frozen=True)
class _Filter:
    states: list[AlertState] | None
    severities: list[Severity] | None
    area: str | None
    rule: str | None
    since_ms: int | None
    until_ms: int | None
    limit: int

    def query(self, ctx: ApiContext, area_id: str | None, limit: int | None = None) -> list[Alert]:
        return ctx.alert_store.list(
            state=self.states,
            severity=self.severities,
            area_id=area_id,
            rule_id=self.rule,
            since_ms=self.since_ms,
            until_ms=self.until_ms,
            limit=self.limit if limit is None else limit,
        )

    def visible_in(
        self, ctx: ApiContext, area_id: str, keep: Callable[[Alert], bool]
    ) -> list[Alert]:
        """The newest ``limit`` alerts of ``area_id`` that ``keep`` accepts. An area's alerts
        told to one post may be few among many (a county's gates beside its one flood): read
        deeper until enough are found or the area has no more."""
        depth = self.limit
        while True:
            rows = self.query(ctx, area_id, depth)
            kept = [a for a in rows if keep(a)]
            if len(kept) >= self.limit or len(rows) < depth or depth >= MAX_DEPTH:
                return kept[: self.limit]
            depth *= 4


def _list(ctx: ApiContext, principal: Principal, f: _Filter) -> list[Alert]:
    if principal.role is Role.OPERATOR:
        return f.query(ctx, f.area)
    # Anyone else: what lies in its own areas, or was told to its posts (each post answers for
    # an area: read that area's alerts, keep those told to the post); and in ``area`` if asked.
    found: dict[str, Alert] = {}
    posts = {area_of(key, ctx.registry) for key in principal.audiences}
    wheres = (set(principal.areas) if principal.area_wide else set()) | posts - {None}

    def keep(alert: Alert) -> bool:
        return _visible(principal, alert) and (f.area is None or f.area in alert.areas.values())

    for own in sorted(a for a in wheres if a is not None):
        found.update((a.id, a) for a in f.visible_in(ctx, own, keep))
    ordered = sorted(found.values(), key=lambda a: (a.opened_ms, a.id), reverse=True)
    return ordered[: f.limit]


@router.get("", summary="list alerts, newest first", responses=ERRORS)
async def list_alerts(
    principal: Caller,
    request: Request,
    ctx: Annotated[ApiContext, Depends(context)],
    state: Annotated[list[AlertState] | None, Query(description="one or more states")] = None,
    severity: Annotated[list[Severity] | None, Query(description="one or more severities")] = None,
    area: Annotated[
        str | None,
        Query(pattern=AREA_ID, description="an area id at any level", examples=["430502"]),
    ] = None,
    rule: Annotated[
        str | None, Query(pattern=AREA_ID, description="a rule id", examples=["gate_forced_open"])
    ] = None,
    since: Annotated[
        datetime | None,
        Query(description="opened at or after (ISO 8601)", examples=["2026-11-29T00:00:00+08:00"]),
    ] = None,
    until: Annotated[datetime | None, Query(description="opened before (ISO 8601)")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[Alert]:
    """Alerts the caller may see, filtered; a grid worker sees its own areas only."""
    wanted = _Filter(state, severity, area, rule, _ms(since), _ms(until), limit)
    shared = scope(request, principal, "alerts")  # a department: the alerts shared with it
    found = await asyncio.to_thread(_list, ctx, shared.principal, wanted)
    found = [a for a in found if shared.keeps(a)]
    counted(request, len(found))
    return found


async def _stream(ctx: ApiContext, principal: Principal, request: Request) -> AsyncIterator[bytes]:
    token_id = principal.token_id
    async with ctx.feed.listen(lambda alert: _visible(principal, alert)) as listener:
        yield b": citysense alert stream\n\n"
        quiet_since = time.monotonic()
        while not await request.is_disconnected():
            # A token revoked while its stream is open: the stream ends within seconds.
            ctx.tokens.reload_if_changed()
            gone = principal.person is not None and (
                ctx.people is None or ctx.people.get(principal.person) is None
            )  # a person struck from the people file
            if gone or not ctx.tokens.is_active(token_id):
                yield b"event: revoked\ndata: {}\n\n"
                return
            try:
                async with asyncio.timeout(RECHECK_S):
                    change = await listener.next()
            except TimeoutError:
                if time.monotonic() - quiet_since >= KEEPALIVE_S:
                    quiet_since = time.monotonic()
                    yield b": keepalive\n\n"
                continue
            quiet_since = time.monotonic()
            yield _sse(change, listener.missed)


def _sse(change: Change, missed: int) -> bytes:
    data = {
        "alert": change.alert.model_dump(mode="json"),
        "event": change.event.model_dump(mode="json"),
        "message_zh": change.message_zh,
        "message_en": change.message_en,
        "missed": missed,  # changes dropped because this client fell behind
    }
    text = json.dumps(data, ensure_ascii=False)
    return f"id: {change.alert.id}:{change.event.at_ms}\nevent: alert\ndata: {text}\n\n".encode()


@router.get(
    "/stream",
    summary="live alert changes (Server-Sent Events)",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}, **ERRORS},
)
async def stream(
    principal: Caller, ctx: Annotated[ApiContext, Depends(context)], request: Request
) -> StreamingResponse:
    """Each new alert and each change as an ``alert`` event, only those the caller may see."""
    cap = ctx.settings.api_streams_per_token
    if ctx.streams.get(principal.token_id, 0) >= cap:
        raise ApiError(429, "too_many_streams", f"at most {cap} open streams per token")
    ctx.streams[principal.token_id] = ctx.streams.get(principal.token_id, 0) + 1

    async def closed() -> None:
        # A background task runs once the response is over, however it ended (also when the
        # client left before the stream's first byte, when the generator never started).
        left = ctx.streams.get(principal.token_id, 1) - 1
        if left > 0:
            ctx.streams[principal.token_id] = left
        else:
            ctx.streams.pop(principal.token_id, None)

    return StreamingResponse(
        _stream(ctx, principal, request),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        background=BackgroundTask(closed),
    )


async def _visible_alert(ctx: ApiContext, principal: Principal, alert_id: str) -> Alert:
    alert = await asyncio.to_thread(ctx.alert_store.get, alert_id)
    if alert is None or not _visible(principal, alert):
        raise not_found("alert", alert_id)
    return alert


@router.get(
    "/{alert_id}",
    summary="one alert with its history",
    responses={404: {"model": ErrorBody}, **ERRORS},
)
async def get_alert(
    alert_id: str,
    principal: Caller,
    ctx: Annotated[ApiContext, Depends(context)],
    request: Request,
) -> AlertDetail:
    """The alert and its history rows, oldest first."""
    shared = scope(request, principal, "alerts")  # a department: the alerts shared with it
    alert = await _visible_alert(ctx, shared.principal, alert_id)
    if not shared.keeps(alert):
        raise not_found("alert", alert_id)
    counted(request, 1)
    history = await asyncio.to_thread(ctx.alert_store.history, alert.id)
    return AlertDetail(alert=alert, history=history)


async def _act(
    action: str, alert_id: str, principal: Principal, ctx: ApiContext, body: ActionBody | None
) -> Changed:
    await _visible_alert(ctx, principal, alert_id)
    step = ctx.alert_store.acknowledge if action == "acknowledge" else ctx.alert_store.resolve
    note = body.note if body else None
    now = time.time_ns() // 1_000_000
    try:
        alert, event = await asyncio.to_thread(
            step, alert_id, principal.name, now, note, ctx.announcements
        )
    except AlertNotFound:
        raise not_found("alert", alert_id) from None
    except InvalidTransition as e:
        raise ApiError(409, "invalid_transition", str(e)) from None
    except ReservedActor as e:  # a token named auto in a hand-edited file (`tokens add` refuses it)
        raise ApiError(422, "reserved_actor", str(e)) from None
    if ctx.announce is not None:
        await ctx.announce(alert, event)
    return Changed(alert=alert, event=event)


_ACT_ERRORS = {
    404: {"model": ErrorBody, "description": "no such alert, or not yours"},
    409: {"model": ErrorBody, "description": "not allowed in the alert's state"},
    422: {"model": ErrorBody, "description": "the token's name is reserved (auto)"},
    429: {"model": ErrorBody, "description": "too many writes for this token; see Retry-After"},
    **ERRORS,
}


@router.post("/{alert_id}/ack", summary="acknowledge: I am on it", responses=_ACT_ERRORS)
async def acknowledge(
    alert_id: str,
    principal: WriteCaller,
    ctx: Annotated[ApiContext, Depends(context)],
    body: ActionBody | None = None,
) -> Changed:
    """Stops escalation; announced to the alert's audience like any change."""
    return await _act("acknowledge", alert_id, principal, ctx, body)


@router.post("/{alert_id}/resolve", summary="resolve: the problem is gone", responses=_ACT_ERRORS)
async def resolve(
    alert_id: str,
    principal: WriteCaller,
    ctx: Annotated[ApiContext, Depends(context)],
    body: ActionBody | None = None,
) -> Changed:
    """Closes it; if the condition still holds, the next reading opens a new alert."""
    return await _act("resolve", alert_id, principal, ctx, body)
