"""Who may see and do what to a case, and the one way a step is taken (ingest/api/cases.py).

Who sees a case: an operator, everyone; anyone else when the case lies in their areas (a grid
worker: ``Principal.area_wide``; a chief or department staff only through the rest), is
assigned to one of their audience keys (``Principal.audiences``), or was reported by them —
else 404, exactly as if it did not exist. Who may act: dispatch and close, operators; accept,
arrive and handle, the assignee; verify and send back, the reporter or an operator but never
the handler. A wrong role answers 403 with a named code, a step out of order 409
``invalid_transition``. Roles are checked on the case as locked in the step's own transaction,
so a reassignment in between cannot let the wrong person through.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from ingest.api.casebodies import CaseChanged
from ingest.api.context import ApiContext
from ingest.api.errors import ERRORS, ApiError, ErrorBody, not_found
from ingest.api.tokens import Principal, Role
from ingest.cases.announce import case_messages
from ingest.cases.config import CaseConfig
from ingest.cases.photos import PhotoStore
from ingest.cases.store import CaseNotFound, CaseStore, Step, Viewer
from ingest.cases.views import view
from rules.cases import Case, CaseEvent, InvalidTransition


def now_ms() -> int:
    return time.time_ns() // 1_000_000


# -- who is who -------------------------------------------------------------------------------


def is_operator(p: Principal) -> bool:
    return p.role is Role.OPERATOR


def me(p: Principal) -> str:
    """The name a case keeps for the caller as handler: the person, else the token's name."""
    return p.person or p.name


def reported(p: Principal, case: Case) -> bool:
    """The person who reported it, or the very token (by id: names are not unique); nobody
    for a rule's own filing."""
    if case.reporter_person is not None:
        return p.person == case.reporter_person
    return case.reporter_token is not None and p.token_id == case.reporter_token


def handles(p: Principal, case: Case) -> bool:
    """The person who accepted it (only persons can: they alone hold assignee keys)."""
    return p.person is not None and case.handler == p.person


def assigned(p: Principal, case: Case) -> bool:
    return case.assignee is not None and case.assignee in p.audiences


def visible(p: Principal, case: Case) -> bool:
    return (
        is_operator(p)
        or (p.area_wide and p.sees(case.areas.values()))
        or assigned(p, case)
        or reported(p, case)
        or handles(p, case)
    )


def viewer(p: Principal) -> Viewer:
    return Viewer(
        areas=p.areas if p.area_wide else frozenset(),
        keys=p.audiences,
        person=p.person,
        token=None if p.person else p.token_id,
    )


def operators_only(p: Principal, _case: Case) -> None:
    if not is_operator(p):
        raise ApiError(403, "operators_only", "only the command centre (operators) may do this")


def assignee_only(p: Principal, case: Case) -> None:
    if not assigned(p, case):
        raise ApiError(403, "not_assignee", "only the case's assignee may do this")


def handler_only(p: Principal, case: Case) -> None:
    """Once accepted, the one who accepted goes on site and handles it: whoever verifies then
    knows who did the work (a colleague of the unit cannot handle and then verify)."""
    if case.handler is None:  # not accepted yet: the assignee, and the step is out of order
        assignee_only(p, case)
    elif not handles(p, case):
        raise ApiError(403, "not_handler", "only the one who accepted the case may do this")


def checker_only(p: Principal, case: Case) -> None:
    if handles(p, case):
        raise ApiError(403, "own_work", "the handler cannot verify or send back their own work")
    if not (is_operator(p) or reported(p, case)):
        raise ApiError(403, "not_reporter", "only the reporter or an operator may do this")


# -- plumbing ---------------------------------------------------------------------------------


def case_store(ctx: ApiContext) -> tuple[CaseStore, CaseConfig]:
    if ctx.cases is None or ctx.case_config is None:
        raise ApiError(503, "cases_unavailable", "cases are not served here")
    return ctx.cases, ctx.case_config


def photo_store(ctx: ApiContext) -> PhotoStore:
    if ctx.photos is None:
        raise ApiError(503, "cases_unavailable", "case photos are not served here")
    return ctx.photos


async def visible_case(ctx: ApiContext, p: Principal, case_id: str) -> Case:
    store, _ = case_store(ctx)
    found = await asyncio.to_thread(store.get, case_id)
    if found is None or not visible(p, found):
        raise not_found("case", case_id)
    return found


def announce(ctx: ApiContext) -> Callable[[Any], list[tuple[str, bytes]]]:
    return lambda changes: case_messages(changes, ctx.registry)


async def act(
    ctx: ApiContext,
    p: Principal,
    case_id: str,
    allowed: Callable[[Principal, Case], None],
    step: Step,
) -> CaseChanged:
    """Check visibility (404), then in the step's transaction on the locked case the role
    (403) and the step (409); store it with its announcements."""
    store, _ = case_store(ctx)
    await visible_case(ctx, p, case_id)

    def checked(case: Case) -> tuple[Case, CaseEvent]:
        allowed(p, case)
        return step(case)

    try:
        changed, event = await asyncio.to_thread(store.transition, case_id, checked, announce(ctx))
    except CaseNotFound:
        raise not_found("case", case_id) from None
    except InvalidTransition as e:
        raise ApiError(409, "invalid_transition", str(e)) from None
    ctx.wake_outbox()
    return CaseChanged(case=view(changed, now_ms()), event=event)


READ_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "no such case, or not yours"},
    503: {"model": ErrorBody, "description": "cases are not served here"},
    **ERRORS,
}
ACT_ERRORS: dict[int | str, dict[str, Any]] = {
    403: {
        "model": ErrorBody,
        "description": "not for your role: operators_only, not_assignee, own_work, not_reporter",
    },
    409: {"model": ErrorBody, "description": "invalid_transition: not in the case's state"},
    429: {"model": ErrorBody, "description": "too many writes for this token; see Retry-After"},
    **READ_ERRORS,
}


def ms(moment: datetime | None) -> int | None:
    return None if moment is None else int(moment.timestamp() * 1000)
