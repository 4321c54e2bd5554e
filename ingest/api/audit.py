"""The access audit at the API: every request of a department token is recorded — who, what
(endpoint, data set, query), when, how many rows, the answer's status — before its answer
leaves (ingest/sharing/audit.py; written in a thread, never on the event loop). A read that
cannot be recorded is not answered (503 ``audit_unavailable``). ``GET /audit`` lists the rows,
for operators only (403 ``operators_only``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, FastAPI, Query, Request, Response
from pydantic import BaseModel
from sqlalchemy.exc import SQLAlchemyError

from ingest.api.auth import Caller
from ingest.api.errors import ERRORS, ApiError, ErrorBody, error_response
from ingest.api.sharing import sharing_state
from ingest.api.tokens import Principal, Role
from ingest.sharing.audit import AuditRecord

log = logging.getLogger(__name__)
router = APIRouter(tags=["audit"])
# The answer withheld for want of an audit row keeps the security headers the app set on it.
_KEPT_HEADERS = (
    "x-content-type-options",
    "referrer-policy",
    "x-frame-options",
    "content-security-policy",
)


class AuditRow(BaseModel):
    """One recorded read of a department token."""

    at_ms: int
    token_id: str
    token_name: str
    department: str
    method: str
    endpoint: str
    path: str
    data_set: str | None
    query: dict[str, list[str]]
    rows: int | None
    status: int
    code: str | None


def _ms(moment: datetime | None) -> int | None:
    return None if moment is None else int(moment.timestamp() * 1000)


@router.get(
    "/audit",
    summary="the access audit of department tokens, newest first (operators)",
    responses={403: {"model": ErrorBody, "description": "not an operator"}, **ERRORS},
)
async def list_audit(
    principal: Caller,
    request: Request,
    department: Annotated[
        str | None, Query(pattern=r"^[a-z][a-z0-9_]{0,63}$", examples=["ecology_env"])
    ] = None,
    since: Annotated[datetime | None, Query(description="at or after (ISO 8601)")] = None,
    until: Annotated[datetime | None, Query(description="before (ISO 8601)")] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
) -> list[AuditRow]:
    """Who read what of the shared data, when, how much, and what they were answered."""
    if principal.role is not Role.OPERATOR:
        request.state.audit_code = "operators_only"
        raise ApiError(403, "operators_only", "the access audit is for operators")
    audit = await asyncio.to_thread(lambda: sharing_state(request).audit())
    rows = await asyncio.to_thread(
        audit.list,
        department=department,
        since_ms=_ms(since),
        until_ms=_ms(until),
        limit=limit,
    )
    return [AuditRow.model_validate(r, from_attributes=True) for r in rows]


def _record_of(request: Request, principal: Principal, status: int) -> AuditRecord:
    state = request.state
    route = getattr(request.scope.get("route"), "path", None) or request.url.path
    query: dict[str, list[str]] = {}
    for key, value in request.query_params.multi_items():
        query.setdefault(key, []).append(value[:200])
    return AuditRecord(
        at_ms=time.time_ns() // 1_000_000,
        token_id=principal.token_id,
        token_name=principal.name,
        department=principal.department or principal.name,
        method=request.method,
        endpoint=route[:64],
        path=request.url.path,
        status=status,
        data_set=getattr(state, "audit_set", None),
        query=query,
        rows=getattr(state, "audit_rows", None) if status < 400 else None,
        code=getattr(state, "audit_code", None),
    )


async def _write(request: Request, principal: Principal, status: int) -> bool:
    """Record the request; False if the audit could not be written."""
    record = _record_of(request, principal, status)
    try:
        audit = await asyncio.to_thread(lambda: sharing_state(request).audit())
        await asyncio.to_thread(audit.record, record)
    except (SQLAlchemyError, OSError) as e:
        log.error("access audit not written, the answer is withheld: %s", e)
        return False
    return True


def install(app: FastAPI) -> None:
    """Add ``GET /audit`` and the audit of every department token's request."""
    app.include_router(router)

    @app.middleware("http")
    async def _audited(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        try:
            response = await call_next(request)
        except Exception:
            principal = getattr(request.state, "principal", None)
            if principal is not None and principal.role is Role.DEPARTMENT:
                await _write(request, principal, 500)
            raise
        principal = getattr(request.state, "principal", None)
        if principal is None or principal.role is not Role.DEPARTMENT:
            return response
        if not await _write(request, principal, response.status_code):
            kept = {k: v for k, v in response.headers.items() if k.lower() in _KEPT_HEADERS}
            return error_response(
                503,
                "audit_unavailable",
                "the read could not be recorded in the access audit",
                headers=kept,
            )
        return response
