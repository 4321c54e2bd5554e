"""Cases (案件, work orders): report, file from an alert, dispatch, accept, arrive, handle,
verify or send back, close; statistics. Photos are in ``casephotos.py``, who may do what in
``caseaccess.py``, the bodies in ``casebodies.py``.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query

from devices.kinds import Level
from ingest.api.auth import Caller
from ingest.api.caseaccess import (
    ACT_ERRORS,
    READ_ERRORS,
    act,
    announce,
    assignee_only,
    case_store,
    checker_only,
    handler_only,
    is_operator,
    me,
    ms,
    now_ms,
    operators_only,
    viewer,
    visible_case,
)
from ingest.api.casebodies import (
    AREA_ID,
    ArriveBody,
    CaseChanged,
    CaseDetail,
    CaseList,
    CaseStats,
    DispatchBody,
    HandleBody,
    NewCase,
    NoteBody,
    RequiredNote,
)
from ingest.api.context import ApiContext, context
from ingest.api.errors import ApiError, ErrorBody, not_found
from ingest.api.ratelimit import WriteCaller
from ingest.cases.assignees import UnknownAssignee, resolve_assignee
from ingest.cases.filing import case_from_alert
from ingest.cases.stats import GroupBy, group
from ingest.cases.store import CaseExists, CaseQuery, Viewer
from ingest.cases.views import view
from rules.cases import (
    Case,
    CaseEvent,
    CaseSource,
    CaseState,
    Position,
    accept,
    arrive,
    close,
    dispatch,
    file_case,
    handle,
    send_back,
    verify,
)

router = APIRouter(prefix="/cases", tags=["cases"])


# -- routes -----------------------------------------------------------------------------------


@router.get("", summary="list cases: overdue first, then by deadline", responses=READ_ERRORS)
async def list_cases(
    principal: Caller,
    ctx: Annotated[ApiContext, Depends(context)],
    state: Annotated[list[CaseState] | None, Query(description="one or more states")] = None,
    area: Annotated[
        str | None, Query(pattern=AREA_ID, description="an area id at any level")
    ] = None,
    assignee: Annotated[
        str | None, Query(max_length=200, description="an assignee key", examples=["person/li.na"])
    ] = None,
    overdue: Annotated[bool, Query(description="only cases past their step's deadline")] = False,
    mine: Annotated[
        bool, Query(description="only cases assigned to me (my keys) or handled by me")
    ] = False,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> CaseList:
    """The cases the caller may see, filtered."""
    store, _ = case_store(ctx)
    query = CaseQuery(
        states=state or (),
        area=area,
        assignee=assignee,
        overdue=overdue,
        visible_to=None if is_operator(principal) else viewer(principal),
        mine=Viewer(keys=principal.audiences, person=principal.person) if mine else None,
        limit=limit,
    )
    now = now_ms()
    found = await asyncio.to_thread(store.list, query, now)
    return CaseList(cases=[view(c, now) for c in found])


@router.get("/stats", summary="case statistics by department or area", responses=READ_ERRORS)
async def case_stats(
    principal: Caller,
    ctx: Annotated[ApiContext, Depends(context)],
    by: GroupBy = GroupBy.DEPARTMENT,
    level: Annotated[Level, Query(description="with by=area: the level")] = Level.COUNTY,
    since: Annotated[datetime | None, Query(description="created at or after (ISO 8601)")] = None,
    until: Annotated[datetime | None, Query(description="created before (ISO 8601)")] = None,
) -> CaseStats:
    """Per group: cases by state, total, on-time rate, median time to handle, sends back. Over
    the cases the caller may see."""
    store, _ = case_store(ctx)
    only = None if is_operator(principal) else viewer(principal)

    def grouped() -> CaseStats:  # reading and grouping every case is off the event loop
        found = store.created_between(ms(since), ms(until), only)
        return CaseStats(groups=group(found, by, level, ctx.registry))

    return await asyncio.to_thread(grouped)


@router.post(
    "",
    status_code=201,
    summary="report a case, or file one from an alert",
    responses={
        403: {"model": ErrorBody, "description": "operators_only, not_your_area"},
        404: {"model": ErrorBody, "description": "no such alert"},
        409: {"model": ErrorBody, "description": "case_exists: the alert has a case"},
        **READ_ERRORS,
    },
)
async def create_case(
    body: NewCase, principal: WriteCaller, ctx: Annotated[ApiContext, Depends(context)]
) -> CaseDetail:
    """By hand: anyone whose areas cover ``grid`` (or an operator). From an alert: operators."""
    store, config = case_store(ctx)
    now = now_ms()
    if body.alert_id is not None:
        if not is_operator(principal):
            raise ApiError(403, "operators_only", "only operators file a case from an alert")
        alert = await asyncio.to_thread(ctx.alert_store.get, body.alert_id)
        if alert is None:
            raise not_found("alert", body.alert_id)
        new, first = case_from_alert(
            alert,
            ctx.rules,
            ctx.registry,
            reporter=principal.name,
            reporter_person=principal.person,
            reporter_token=None if principal.person else principal.token_id,
            at_ms=now,
            deadlines=config.deadlines,
        )
    else:
        assert body.grid is not None and body.title is not None  # NewCase checks
        grid = ctx.registry.areas.get(body.grid)
        if grid is None or grid.level is not Level.GRID:
            raise ApiError(422, "unknown_grid", f"no grid {body.grid!r}")
        areas = {a.level: a.id for a in ctx.registry.path_of(grid.id).areas}
        if not (is_operator(principal) or principal.sees(areas.values())):
            raise ApiError(403, "not_your_area", f"grid {grid.id} is not in your areas")
        new, first = file_case(
            title=body.title,
            description=body.description,
            source=CaseSource.OPERATOR if is_operator(principal) else CaseSource.REPORT,
            severity=body.severity,
            areas=areas,
            reporter=principal.name,
            reporter_person=principal.person,
            reporter_token=None if principal.person else principal.token_id,
            at_ms=now,
            deadlines=config.deadlines,
            lat=body.lat,
            lon=body.lon,
        )
    try:
        await asyncio.to_thread(store.create, new, first, announce(ctx))
    except CaseExists as e:
        raise ApiError(
            409, "case_exists", str(e), {"case_id": e.case_id, "alert_id": e.alert_id}
        ) from None
    ctx.wake_outbox()
    return CaseDetail(case=view(new, now), history=[first])


@router.get("/{case_id}", summary="one case with its history", responses=READ_ERRORS)
async def get_case(
    case_id: str, principal: Caller, ctx: Annotated[ApiContext, Depends(context)]
) -> CaseDetail:
    """The case and its history rows, oldest first."""
    store, _ = case_store(ctx)
    found = await visible_case(ctx, principal, case_id)
    history = await asyncio.to_thread(store.history, found.id)
    return CaseDetail(case=view(found, now_ms()), history=history)


@router.post("/{case_id}/dispatch", summary="send it to a unit or a person", responses=ACT_ERRORS)
async def dispatch_case(
    case_id: str,
    body: DispatchBody,
    principal: WriteCaller,
    ctx: Annotated[ApiContext, Depends(context)],
) -> CaseChanged:
    """Operators; also a reassignment while nobody has accepted it. 422 ``unknown_assignee``."""
    _, config = case_store(ctx)

    def step(case: Case) -> tuple[Case, CaseEvent]:
        try:
            key, level = resolve_assignee(body.to, case, ctx.registry, ctx.people)
        except UnknownAssignee as e:
            raise ApiError(422, "unknown_assignee", str(e)) from None
        return dispatch(
            case,
            to=key,
            assignee_level=level,
            actor=principal.name,
            at_ms=now_ms(),
            deadlines=config.deadlines,
            note=body.note,
        )

    return await act(ctx, principal, case_id, operators_only, step)


@router.post("/{case_id}/accept", summary="take it on (受理)", responses=ACT_ERRORS)
async def accept_case(
    case_id: str,
    principal: WriteCaller,
    ctx: Annotated[ApiContext, Depends(context)],
    body: NoteBody | None = None,
) -> CaseChanged:
    """The assignee; the caller becomes the handler."""
    _, config = case_store(ctx)
    return await act(
        ctx,
        principal,
        case_id,
        assignee_only,
        lambda case: accept(
            case,
            actor=principal.name,
            handler=me(principal),
            at_ms=now_ms(),
            deadlines=config.deadlines,
            note=body.note if body else None,
        ),
    )


@router.post("/{case_id}/arrive", summary="on site (到场), with the position", responses=ACT_ERRORS)
async def arrive_case(
    case_id: str,
    body: ArriveBody,
    principal: WriteCaller,
    ctx: Annotated[ApiContext, Depends(context)],
) -> CaseChanged:
    """The one who accepted it."""
    _, config = case_store(ctx)
    return await act(
        ctx,
        principal,
        case_id,
        handler_only,
        lambda case: arrive(
            case,
            actor=principal.name,
            position=Position(lat=body.lat, lon=body.lon),
            at_ms=now_ms(),
            deadlines=config.deadlines,
            note=body.note,
        ),
    )


@router.post(
    "/{case_id}/handle",
    summary="dealt with (处置): a note and photo evidence",
    responses={422: {"model": ErrorBody, "description": "unknown_photo"}, **ACT_ERRORS},
)
async def handle_case(
    case_id: str,
    body: HandleBody,
    principal: WriteCaller,
    ctx: Annotated[ApiContext, Depends(context)],
) -> CaseChanged:
    """The one who accepted it. ``photos``: ids uploaded to this case first
    (``POST /cases/{id}/photos``)."""
    _, config = case_store(ctx)

    def step(case: Case) -> tuple[Case, CaseEvent]:
        missing = [ph for ph in body.photos if ph not in case.photos]
        if missing:
            raise ApiError(422, "unknown_photo", "upload the photos to this case first", missing)
        return handle(
            case,
            actor=principal.name,
            note=body.note,
            photos=tuple(dict.fromkeys(body.photos)),
            at_ms=now_ms(),
            deadlines=config.deadlines,
        )

    return await act(ctx, principal, case_id, handler_only, step)


@router.post("/{case_id}/verify", summary="confirmed (核查)", responses=ACT_ERRORS)
async def verify_case(
    case_id: str,
    principal: WriteCaller,
    ctx: Annotated[ApiContext, Depends(context)],
    body: NoteBody | None = None,
) -> CaseChanged:
    """The reporter or an operator, never the handler."""
    _, config = case_store(ctx)
    return await act(
        ctx,
        principal,
        case_id,
        checker_only,
        lambda case: verify(
            case,
            actor=principal.name,
            at_ms=now_ms(),
            deadlines=config.deadlines,
            note=body.note if body else None,
        ),
    )


@router.post("/{case_id}/send-back", summary="not good enough: handle again", responses=ACT_ERRORS)
async def send_back_case(
    case_id: str,
    body: RequiredNote,
    principal: WriteCaller,
    ctx: Annotated[ApiContext, Depends(context)],
) -> CaseChanged:
    """The reporter or an operator, never the handler: back to accepted."""
    _, config = case_store(ctx)
    return await act(
        ctx,
        principal,
        case_id,
        checker_only,
        lambda case: send_back(
            case, actor=principal.name, note=body.note, at_ms=now_ms(), deadlines=config.deadlines
        ),
    )


@router.post("/{case_id}/close", summary="结案", responses=ACT_ERRORS)
async def close_case(
    case_id: str,
    principal: WriteCaller,
    ctx: Annotated[ApiContext, Depends(context)],
    body: NoteBody | None = None,
) -> CaseChanged:
    """Operators, once verified."""
    return await act(
        ctx,
        principal,
        case_id,
        operators_only,
        lambda case: close(
            case, actor=principal.name, at_ms=now_ms(), note=body.note if body else None
        ),
    )
