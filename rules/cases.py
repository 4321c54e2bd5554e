"""Cases (案件, work orders) and their lifecycle: the closed loop of digital urban management.

filed → dispatched (to a department unit or a person, with a deadline by severity) → accepted →
on_site → handled → verified → closed; a handled case the reporter or an operator finds wanting
is sent back to accepted (the handler goes on site and handles it again).

Pure functions of a case and a time, as ``rules/alerts.py`` is for alerts: each returns the new
case and the history row to record, so the store only persists and the rules of what may happen
live here. A step out of order raises ``InvalidTransition`` (the API answers 409).

Deadlines: every state but closed waits for one step (``STEP_OF_STATE``), which has a duration
per severity (``CaseDeadlines``, from ``config/cases.yaml``). A step past its deadline makes the
case supervised (督办): the level above whoever answers for it takes it up, and the step gets a
new deadline of the same length; each further overdue moves one level higher, up to the city.

Why one module (over 400 lines): the states, the deadlines each state waits under and the steps
between them are one lifecycle, read together to see what may happen when (as
``rules/alerts.py`` is for alerts); the store, the API and the clock only apply it.
"""

from __future__ import annotations

import re
import secrets
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, model_validator

from devices.kinds import Level
from rules.alerts import InvalidTransition
from rules.durations import Duration
from rules.model import Severity

__all__ = [
    "LEVELS_UP",
    "STEP_OF_STATE",
    "Case",
    "CaseAction",
    "CaseDeadlines",
    "CaseEvent",
    "CaseSource",
    "CaseState",
    "CaseStep",
    "InvalidTransition",
    "Position",
    "StepDeadlines",
    "accept",
    "arrive",
    "close",
    "dispatch",
    "file_case",
    "handle",
    "new_case_id",
    "overdue",
    "parse_assignee",
    "send_back",
    "supervise",
    "verify",
]

LEVELS_UP = (Level.GRID, Level.VILLAGE, Level.TOWNSHIP, Level.COUNTY, Level.CITY)
CASE_ID = re.compile(r"^C-[0-9a-f]{12}$")


class CaseState(StrEnum):
    """Where a case is in its life."""

    FILED = "filed"  # 立案: recorded, nobody sent yet
    DISPATCHED = "dispatched"  # 派遣: sent to a department unit or a person
    ACCEPTED = "accepted"  # 受理: someone of the assignee took it on
    ON_SITE = "on_site"  # 到场: the handler is there
    HANDLED = "handled"  # 处置: done, with a note and photos
    VERIFIED = "verified"  # 核查: the reporter or an operator confirmed it
    CLOSED = "closed"  # 结案


class CaseAction(StrEnum):
    """What a history row records."""

    FILED = "filed"
    DISPATCHED = "dispatched"
    ACCEPTED = "accepted"
    ARRIVED = "arrived"
    HANDLED = "handled"
    VERIFIED = "verified"
    SENT_BACK = "sent_back"
    CLOSED = "closed"
    SUPERVISED = "supervised"  # 督办: a step went past its deadline
    PHOTO_ADDED = "photo_added"  # evidence uploaded to the case (who and when)


class CaseSource(StrEnum):
    """How a case came to be."""

    ALERT = "alert"  # from an alert (its rule files cases, or an operator decided)
    OPERATOR = "operator"  # typed in by the command centre
    REPORT = "report"  # reported by a person in the field (a grid worker's phone)


class CaseStep(StrEnum):
    """The step a state waits for; its deadline is the case's ``deadline_ms``."""

    DISPATCH = "dispatch"
    ACCEPT = "accept"
    ARRIVE = "arrive"
    HANDLE = "handle"
    VERIFY = "verify"
    CLOSE = "close"


STEP_OF_STATE: dict[CaseState, CaseStep] = {
    CaseState.FILED: CaseStep.DISPATCH,
    CaseState.DISPATCHED: CaseStep.ACCEPT,
    CaseState.ACCEPTED: CaseStep.ARRIVE,
    CaseState.ON_SITE: CaseStep.HANDLE,
    CaseState.HANDLED: CaseStep.VERIFY,
    CaseState.VERIFIED: CaseStep.CLOSE,
}


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class StepDeadlines(_Strict):
    """How long each step may take, for one severity."""

    dispatch: Duration
    accept: Duration
    arrive: Duration
    handle: Duration
    verify: Duration
    close: Duration

    @model_validator(mode="after")
    def _positive(self) -> StepDeadlines:
        zero = [step.value for step in CaseStep if getattr(self, step.value) <= 0]
        if zero:
            raise ValueError(f"a step needs a deadline longer than 0: {', '.join(zero)}")
        return self


class CaseDeadlines(_Strict):
    """Per severity, per step: the time a step may take before the case is supervised."""

    critical: StepDeadlines
    major: StepDeadlines
    warning: StepDeadlines
    info: StepDeadlines

    def of(self, severity: Severity, step: CaseStep) -> int:
        """Milliseconds ``step`` may take for a case of ``severity``."""
        steps: StepDeadlines = getattr(self, severity.value)
        ms: int = getattr(steps, step.value)
        return ms


class Position(_Strict):
    """Where the handler reported being (WGS-84)."""

    lat: float = Field(ge=-90, le=90, allow_inf_nan=False)
    lon: float = Field(ge=-180, le=180, allow_inf_nan=False)


class Case(_Strict):
    """One case. ``areas`` is its place's area path (grid up to city)."""

    id: str
    title: str
    description: str = ""
    source: CaseSource
    alert_id: str | None = None
    rule_id: str | None = None
    severity: Severity
    device_id: str | None = None
    areas: dict[Level, str]
    lat: float | None = None
    lon: float | None = None
    state: CaseState = CaseState.FILED
    reporter: str  # the reporting token's name, or ``auto`` for a rule's own filing
    reporter_person: str | None = None  # the people-file username of the reporter, if one
    # The reporting token's id when the reporter is no person (an operator's token): names are
    # not unique, so only the id says who reported it. None for a rule's own filing (``auto``).
    reporter_token: str | None = None
    assignee: str | None = None  # ``person/{username}`` or ``department/{dept}/{area}``
    assignee_level: Level | None = None  # the level the assignee works at
    handler: str | None = None  # who accepted: a people-file username (else the token's name)
    deadline_ms: int | None = None
    step: CaseStep | None = CaseStep.DISPATCH
    supervised: bool = False  # 督办: was ever supervised (kept: the evaluation counts it)
    supervision_level: Level | None = None
    # The step it waits for went past its deadline; kept until that step is done, so the
    # board shows it overdue (超期) though supervision gave the step a new deadline.
    late: bool = False
    sent_back_count: int = 0
    photos: tuple[str, ...] = ()
    position: Position | None = None
    created_ms: int
    updated_ms: int
    dispatched_ms: int | None = None  # the first dispatch
    handled_ms: int | None = None  # the first time it was handled
    closed_ms: int | None = None

    @property
    def department(self) -> str | None:
        """The department of a department assignee (``department/{dept}/{area}``)."""
        kind, first, _ = parse_assignee(self.assignee) if self.assignee else ("", "", "")
        return first if kind == "department" else None


class CaseEvent(_Strict):
    """A row of a case's history."""

    case_id: str
    at_ms: int
    action: CaseAction
    actor: str | None = None
    detail: str = ""
    lat: float | None = None
    lon: float | None = None
    photos: tuple[str, ...] = ()


def new_case_id() -> str:
    """A short unique id, safe in URLs and topics."""
    return "C-" + secrets.token_hex(6)


def parse_assignee(key: str) -> tuple[str, str, str]:
    """``person/li.na`` → ("person", "li.na", ""); ``department/flood_hq/430502`` →
    ("department", "flood_hq", "430502"). ValueError for anything else."""
    parts = key.split("/")
    if len(parts) == 2 and parts[0] == "person" and parts[1]:
        return "person", parts[1], ""
    if len(parts) == 3 and parts[0] == "department" and parts[1] and parts[2]:
        return "department", parts[1], parts[2]
    raise ValueError(f"an assignee is person/{{username}} or department/{{id}}/{{area}}: {key!r}")


def overdue(case: Case, now_ms: int) -> bool:
    """Whether the step the case waits for is past its deadline."""
    return (
        case.state is not CaseState.CLOSED and case.deadline_ms is not None
    ) and now_ms > case.deadline_ms


def _expect(case: Case, step: str, *states: CaseState) -> None:
    if case.state not in states:
        wanted = " or ".join(s.value for s in states)
        raise InvalidTransition(f"case {case.id} is {case.state.value}; {step} needs {wanted}")


def _waiting(
    case: Case, state: CaseState, at_ms: int, deadlines: CaseDeadlines
) -> dict[str, object]:
    """The fields of a case moved to ``state``: its next step and that step's deadline."""
    step = STEP_OF_STATE.get(state)
    return {
        "state": state,
        "step": step,
        "deadline_ms": None if step is None else at_ms + deadlines.of(case.severity, step),
        "late": False,
        "updated_ms": max(case.updated_ms, at_ms),
    }


def _event(
    case: Case,
    action: CaseAction,
    actor: str | None,
    at_ms: int,
    detail: str = "",
    **extra: object,
) -> CaseEvent:
    return CaseEvent.model_validate(
        {"case_id": case.id, "at_ms": at_ms, "action": action, "actor": actor, "detail": detail}
        | extra
    )


def file_case(
    *,
    title: str,
    source: CaseSource,
    severity: Severity,
    areas: dict[Level, str],
    reporter: str,
    at_ms: int,
    deadlines: CaseDeadlines,
    description: str = "",
    reporter_person: str | None = None,
    reporter_token: str | None = None,
    alert_id: str | None = None,
    rule_id: str | None = None,
    device_id: str | None = None,
    lat: float | None = None,
    lon: float | None = None,
    case_id: str | None = None,
) -> tuple[Case, CaseEvent]:
    """A new case, filed, waiting to be dispatched; and its first history row."""
    case = Case(
        id=case_id or new_case_id(),
        title=title,
        description=description,
        source=source,
        alert_id=alert_id,
        rule_id=rule_id,
        severity=severity,
        device_id=device_id,
        areas=areas,
        lat=lat,
        lon=lon,
        reporter=reporter,
        reporter_person=reporter_person,
        reporter_token=reporter_token,
        created_ms=at_ms,
        updated_ms=at_ms,
        deadline_ms=at_ms + deadlines.of(severity, CaseStep.DISPATCH),
    )
    return case, _event(case, CaseAction.FILED, reporter, at_ms, description, lat=lat, lon=lon)


def dispatch(
    case: Case,
    *,
    to: str,
    assignee_level: Level,
    actor: str,
    at_ms: int,
    deadlines: CaseDeadlines,
    note: str | None = None,
) -> tuple[Case, CaseEvent]:
    """Sent to ``to`` (an assignee key). Also a reassignment while nobody has accepted it."""
    _expect(case, "dispatch", CaseState.FILED, CaseState.DISPATCHED)
    parse_assignee(to)
    updated = case.model_copy(
        update={
            **_waiting(case, CaseState.DISPATCHED, at_ms, deadlines),
            "assignee": to,
            "assignee_level": assignee_level,
            "dispatched_ms": case.dispatched_ms if case.dispatched_ms is not None else at_ms,
        }
    )
    detail = f"to {to}" + (f": {note}" if note else "")
    return updated, _event(case, CaseAction.DISPATCHED, actor, at_ms, detail)


def accept(
    case: Case,
    *,
    actor: str,
    handler: str,
    at_ms: int,
    deadlines: CaseDeadlines,
    note: str | None = None,
) -> tuple[Case, CaseEvent]:
    """Someone of the assignee took it on; ``handler`` (a username) now answers for it."""
    _expect(case, "accept", CaseState.DISPATCHED)
    updated = case.model_copy(
        update={**_waiting(case, CaseState.ACCEPTED, at_ms, deadlines), "handler": handler}
    )
    return updated, _event(case, CaseAction.ACCEPTED, actor, at_ms, note or "")


def arrive(
    case: Case,
    *,
    actor: str,
    position: Position,
    at_ms: int,
    deadlines: CaseDeadlines,
    note: str | None = None,
) -> tuple[Case, CaseEvent]:
    """The handler is on site, at ``position``."""
    _expect(case, "arrive", CaseState.ACCEPTED)
    updated = case.model_copy(
        update={**_waiting(case, CaseState.ON_SITE, at_ms, deadlines), "position": position}
    )
    return updated, _event(
        case, CaseAction.ARRIVED, actor, at_ms, note or "", lat=position.lat, lon=position.lon
    )


def handle(
    case: Case,
    *,
    actor: str,
    note: str,
    at_ms: int,
    deadlines: CaseDeadlines,
    photos: tuple[str, ...] = (),
) -> tuple[Case, CaseEvent]:
    """Dealt with: the note says how, the photos show it (ids already attached to the case)."""
    _expect(case, "handle", CaseState.ON_SITE)
    missing = [p for p in photos if p not in case.photos]
    if missing:
        raise ValueError(f"photos not attached to case {case.id}: {', '.join(missing)}")
    updated = case.model_copy(
        update={
            **_waiting(case, CaseState.HANDLED, at_ms, deadlines),
            "handled_ms": case.handled_ms if case.handled_ms is not None else at_ms,
        }
    )
    return updated, _event(case, CaseAction.HANDLED, actor, at_ms, note, photos=photos)


def verify(
    case: Case, *, actor: str, at_ms: int, deadlines: CaseDeadlines, note: str | None = None
) -> tuple[Case, CaseEvent]:
    """The reporter or an operator confirmed the handling."""
    _expect(case, "verify", CaseState.HANDLED)
    updated = case.model_copy(update=_waiting(case, CaseState.VERIFIED, at_ms, deadlines))
    return updated, _event(case, CaseAction.VERIFIED, actor, at_ms, note or "")


def send_back(
    case: Case, *, actor: str, note: str, at_ms: int, deadlines: CaseDeadlines
) -> tuple[Case, CaseEvent]:
    """Not good enough: back to accepted, the handler must go on site and handle it again."""
    _expect(case, "send back", CaseState.HANDLED)
    updated = case.model_copy(
        update={
            **_waiting(case, CaseState.ACCEPTED, at_ms, deadlines),
            "sent_back_count": case.sent_back_count + 1,
            "position": None,
        }
    )
    return updated, _event(case, CaseAction.SENT_BACK, actor, at_ms, note)


def close(case: Case, *, actor: str, at_ms: int, note: str | None = None) -> tuple[Case, CaseEvent]:
    """结案: the loop is closed; nothing waits any more."""
    _expect(case, "close", CaseState.VERIFIED)
    updated = case.model_copy(
        update={
            "state": CaseState.CLOSED,
            "step": None,
            "late": False,
            "deadline_ms": None,
            "closed_ms": at_ms,
            "updated_ms": max(case.updated_ms, at_ms),
        }
    )
    return updated, _event(case, CaseAction.CLOSED, actor, at_ms, note or "")


def _level_above(case: Case) -> Level:
    """One level above whoever answers for the case now: the supervising level if it has one,
    else its assignee's level, else its grid (nobody dispatched it yet). Never above the city,
    nor above the highest level of its area path."""
    base = case.supervision_level or case.assignee_level or Level.GRID
    present = [level for level in LEVELS_UP if level in case.areas] or [Level.CITY]
    above = [level for level in present if LEVELS_UP.index(level) > LEVELS_UP.index(base)]
    return above[0] if above else present[-1]


def supervise(case: Case, at_ms: int, deadlines: CaseDeadlines) -> tuple[Case, CaseEvent]:
    """督办: the step is overdue; one level higher takes it up, the step gets a new deadline
    (``at_ms`` + the same step's duration). InvalidTransition if it is not overdue."""
    if not overdue(case, at_ms) or case.step is None:
        raise InvalidTransition(f"case {case.id} is not overdue")
    level = _level_above(case)
    updated = case.model_copy(
        update={
            "supervised": True,
            "late": True,
            "supervision_level": level,
            "deadline_ms": at_ms + deadlines.of(case.severity, case.step),
            "updated_ms": max(case.updated_ms, at_ms),
        }
    )
    where = case.areas.get(level, "")
    detail = f"{case.step.value} overdue; supervised by {level.value} {where}".rstrip()
    return updated, _event(case, CaseAction.SUPERVISED, None, at_ms, detail)


MAX_PHOTOS = 20  # per case: evidence, not an album; every announcement carries the list


def add_photo(case: Case, photo_id: str, actor: str, at_ms: int) -> tuple[Case, CaseEvent]:
    """Evidence uploaded to the case, recorded with who and when. InvalidTransition once the
    case is closed, or when it already holds ``MAX_PHOTOS``."""
    if case.state is CaseState.CLOSED:
        raise InvalidTransition(f"case {case.id} is closed; it takes no more photos")
    if photo_id not in case.photos and len(case.photos) >= MAX_PHOTOS:
        raise InvalidTransition(f"case {case.id} already holds {MAX_PHOTOS} photos")
    updated = case.model_copy(
        update={
            "photos": tuple(dict.fromkeys((*case.photos, photo_id))),
            "updated_ms": max(case.updated_ms, at_ms),
        }
    )
    event = CaseEvent(
        case_id=case.id, at_ms=at_ms, action=CaseAction.PHOTO_ADDED, actor=actor, photos=(photo_id,)
    )
    return updated, event
