"""``GET /deliveries?alert=ID|case=ID``: who was reached how and when (issue 19).

Each delivery of the alert's or case's messages to people's channels (ingest/delivery/): the
recipient, the channel type and endpoint, its state (pending, delivered, failed, expired) and
every attempt with its time and the platform's answer. A caller sees the deliveries of what
they may see (the alert or case itself, as ``GET /alerts/{id}`` and ``GET /cases/{id}``
decide; 404 otherwise); operators see all. ``undelivered``: a critical alert nobody was
reached for in time, escalated to the operators.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel

from ingest.api.auth import Caller
from ingest.api.caseaccess import visible_case
from ingest.api.context import ApiContext, context
from ingest.api.errors import ERRORS, ApiError, ErrorBody, not_found
from ingest.api.tokens import Role
from ingest.delivery.store import DeliveryStore

router = APIRouter(tags=["deliveries"])


class Attempt(BaseModel):
    at_ms: int
    took_ms: int
    http_status: int | None
    code: str
    detail: str
    outcome: str


class Delivery(BaseModel):
    id: int
    key: str
    event: str
    recipient: str
    channel: str
    endpoint: str
    state: Literal["pending", "delivered", "failed", "expired"]
    created_ms: int
    done_ms: int | None
    attempts: list[Attempt]


class Deliveries(BaseModel):
    subject: Literal["alert", "case"]
    id: str
    undelivered: bool  # a critical alert escalated because nobody was reached
    undelivered_detail: str | None = None
    deliveries: list[Delivery]


def delivery_store(request: Request) -> DeliveryStore:
    found: DeliveryStore | None = getattr(request.app.state, "deliveries", None)
    if found is None:
        raise ApiError(503, "deliveries_unavailable", "deliveries are not kept here")
    return found


@router.get(
    "/deliveries",
    summary="who was told of an alert or case, on which channel, when",
    responses={404: {"model": ErrorBody}, 503: {"model": ErrorBody}, **ERRORS},
)
async def get_deliveries(
    principal: Caller,
    ctx: Annotated[ApiContext, Depends(context)],
    request: Request,
    alert: Annotated[str | None, Query(max_length=32)] = None,
    case: Annotated[str | None, Query(max_length=32)] = None,
) -> Deliveries:
    """Every delivery of the alert's (or case's) messages, oldest first, with its attempts."""
    if (alert is None) == (case is None):
        raise ApiError(422, "one_subject", "give alert=ID or case=ID")
    store = delivery_store(request)
    if alert is not None:
        found = await asyncio.to_thread(ctx.alert_store.get, alert)
        if found is None or not principal.sees_alert(found.areas.values(), found.audiences):
            raise not_found("alert", alert)
        rows = await asyncio.to_thread(store.of_subject, "alert", alert)
        flag = await asyncio.to_thread(store.undelivered_flag, alert)
        return Deliveries(
            subject="alert",
            id=alert,
            undelivered=flag is not None,
            undelivered_detail=None if flag is None else str(flag["detail"]),
            deliveries=[Delivery.model_validate(r) for r in rows],
        )
    assert case is not None
    await visible_case(ctx, principal, case)
    rows = await asyncio.to_thread(store.of_subject, "case", case)
    return Deliveries(
        subject="case",
        id=case,
        undelivered=False,
        deliveries=[Delivery.model_validate(r) for r in rows],
    )


class Flagged(BaseModel):
    """A critical alert nobody was reached for in time, still not acknowledged or resolved."""

    alert: str
    at_ms: int
    detail: str
    state: str


@router.get(
    "/deliveries/undelivered",
    summary="critical alerts nobody was reached for (operators)",
    responses={403: {"model": ErrorBody}, 503: {"model": ErrorBody}, **ERRORS},
)
async def undelivered_alerts(
    principal: Caller,
    ctx: Annotated[ApiContext, Depends(context)],
    request: Request,
) -> list[Flagged]:
    """What the operator's page flags: escalated as undelivered and still open (acknowledged:
    someone was reached after all)."""
    if principal.role is not Role.OPERATOR:
        raise ApiError(403, "operators_only", "only operators see the undelivered alerts")
    store = delivery_store(request)
    out = []
    for row in await asyncio.to_thread(store.flagged):
        found = await asyncio.to_thread(ctx.alert_store.get, row["alert"])
        if found is None or found.state.value != "open":
            continue
        out.append(Flagged(state=found.state.value, **row))
    return out
