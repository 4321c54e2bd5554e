"""The case lifecycle (rules/cases.py), pure: every step, the refusals of steps out of order,
sending back, deadlines by severity and step, and the overdue/supervision maths, with times
computed by hand."""

from __future__ import annotations

import pytest

from devices.kinds import Level
from rules.cases import (
    Case,
    CaseAction,
    CaseDeadlines,
    CaseSource,
    CaseState,
    CaseStep,
    InvalidTransition,
    Position,
    accept,
    arrive,
    close,
    dispatch,
    file_case,
    handle,
    overdue,
    parse_assignee,
    send_back,
    supervise,
    verify,
)
from rules.model import Severity

T0 = 1_795_000_000_000
S = 1000
MIN = 60 * S
H = 60 * MIN
AREAS = {
    Level.GRID: "g1",
    Level.VILLAGE: "v1",
    Level.TOWNSHIP: "t1",
    Level.COUNTY: "co1",
    Level.CITY: "c",
}
STEPS = {"dispatch": "10m", "accept": "15m", "arrive": "30m", "handle": "2h"}
DEADLINES = CaseDeadlines.model_validate(
    {
        "critical": {**STEPS, "verify": "1h", "close": "1h"},
        "major": {**STEPS, "verify": "1h", "close": "1h"},
        "warning": {
            "dispatch": "2h",
            "accept": "4h",
            "arrive": "1d",
            "handle": "3d",
            "verify": "1d",
            "close": "1d",
        },
        "info": {
            "dispatch": "1d",
            "accept": "2d",
            "arrive": "3d",
            "handle": "7d",
            "verify": "3d",
            "close": "3d",
        },
    }
)
UNIT = "department/flood_hq/co1"


def _filed(severity: Severity = Severity.CRITICAL) -> Case:
    case, event = file_case(
        title="井盖缺失",
        description="人行道井盖缺失",
        source=CaseSource.REPORT,
        severity=severity,
        areas=AREAS,
        reporter="li.na",
        reporter_person="li.na",
        at_ms=T0,
        deadlines=DEADLINES,
        lat=27.2,
        lon=111.4,
    )
    assert event.action is CaseAction.FILED and event.actor == "li.na"
    assert (event.lat, event.lon) == (27.2, 111.4)
    return case


def _through_handled() -> Case:
    case = _filed()
    case, _ = dispatch(
        case,
        to=UNIT,
        assignee_level=Level.COUNTY,
        actor="duty",
        at_ms=T0 + 5 * MIN,
        deadlines=DEADLINES,
    )
    case, _ = accept(
        case, actor="wang", handler="wang.qiang", at_ms=T0 + 10 * MIN, deadlines=DEADLINES
    )
    case, _ = arrive(
        case,
        actor="wang",
        position=Position(lat=27.3, lon=111.5),
        at_ms=T0 + 20 * MIN,
        deadlines=DEADLINES,
    )
    case = case.model_copy(update={"photos": ("a" * 64,)})
    case, _ = handle(
        case, actor="wang", note="已修复", photos=("a" * 64,), at_ms=T0 + H, deadlines=DEADLINES
    )
    return case


def test_a_case_goes_through_every_step_with_its_deadlines() -> None:
    case = _filed()
    assert case.id.startswith("C-") and len(case.id) == 14
    assert case.state is CaseState.FILED and case.step is CaseStep.DISPATCH
    assert case.deadline_ms == T0 + 10 * MIN  # critical: dispatched within 10 minutes

    case, ev = dispatch(
        case,
        to=UNIT,
        assignee_level=Level.COUNTY,
        actor="duty",
        at_ms=T0 + 5 * MIN,
        deadlines=DEADLINES,
        note="速派",
    )
    assert (case.state, case.step, case.assignee) == (CaseState.DISPATCHED, CaseStep.ACCEPT, UNIT)
    assert case.deadline_ms == T0 + 5 * MIN + 15 * MIN
    assert case.dispatched_ms == T0 + 5 * MIN and case.department == "flood_hq"
    assert ev.action is CaseAction.DISPATCHED and UNIT in ev.detail and "速派" in ev.detail

    case, ev = accept(
        case, actor="wang", handler="wang.qiang", at_ms=T0 + 10 * MIN, deadlines=DEADLINES
    )
    assert (case.state, case.step, case.handler) == (
        CaseState.ACCEPTED,
        CaseStep.ARRIVE,
        "wang.qiang",
    )
    assert case.deadline_ms == T0 + 10 * MIN + 30 * MIN

    case, ev = arrive(
        case,
        actor="wang",
        position=Position(lat=27.3, lon=111.5),
        at_ms=T0 + 20 * MIN,
        deadlines=DEADLINES,
    )
    assert case.state is CaseState.ON_SITE and case.position == Position(lat=27.3, lon=111.5)
    assert (ev.lat, ev.lon) == (27.3, 111.5)
    assert case.deadline_ms == T0 + 20 * MIN + 2 * H

    with pytest.raises(ValueError, match="not attached"):
        handle(case, actor="wang", note="x", photos=("b" * 64,), at_ms=T0 + H, deadlines=DEADLINES)
    case = case.model_copy(update={"photos": ("a" * 64,)})
    case, ev = handle(
        case, actor="wang", note="已修复", photos=("a" * 64,), at_ms=T0 + H, deadlines=DEADLINES
    )
    assert case.state is CaseState.HANDLED and case.handled_ms == T0 + H
    assert ev.photos == ("a" * 64,) and ev.detail == "已修复"
    assert case.deadline_ms == T0 + H + H  # verify: 1 h

    case, ev = verify(case, actor="li.na", at_ms=T0 + 90 * MIN, deadlines=DEADLINES)
    assert (case.state, case.step) == (CaseState.VERIFIED, CaseStep.CLOSE)
    assert case.deadline_ms == T0 + 90 * MIN + H

    case, ev = close(case, actor="duty", at_ms=T0 + 2 * H, note="结案")
    assert case.state is CaseState.CLOSED and case.closed_ms == T0 + 2 * H
    assert case.step is None and case.deadline_ms is None and not overdue(case, T0 + 100 * H)
    assert ev.action is CaseAction.CLOSED and ev.actor == "duty"


def test_steps_out_of_order_are_refused() -> None:
    filed = _filed()
    with pytest.raises(InvalidTransition):
        accept(filed, actor="x", handler="x", at_ms=T0, deadlines=DEADLINES)
    with pytest.raises(InvalidTransition):
        arrive(filed, actor="x", position=Position(lat=0, lon=0), at_ms=T0, deadlines=DEADLINES)
    with pytest.raises(InvalidTransition):
        handle(filed, actor="x", note="n", at_ms=T0, deadlines=DEADLINES)
    with pytest.raises(InvalidTransition):
        verify(filed, actor="x", at_ms=T0, deadlines=DEADLINES)
    with pytest.raises(InvalidTransition):
        send_back(filed, actor="x", note="n", at_ms=T0, deadlines=DEADLINES)
    with pytest.raises(InvalidTransition):
        close(filed, actor="x", at_ms=T0)
    handled = _through_handled()
    with pytest.raises(InvalidTransition):
        dispatch(
            handled, to=UNIT, assignee_level=Level.COUNTY, actor="d", at_ms=T0, deadlines=DEADLINES
        )
    with pytest.raises(InvalidTransition):
        accept(handled, actor="x", handler="x", at_ms=T0, deadlines=DEADLINES)
    with pytest.raises(InvalidTransition):
        close(handled, actor="x", at_ms=T0)  # verified first
    closed, _ = close(
        verify(handled, actor="v", at_ms=T0, deadlines=DEADLINES)[0], actor="d", at_ms=T0
    )
    with pytest.raises(InvalidTransition):
        close(closed, actor="d", at_ms=T0)


def test_a_dispatched_case_may_be_reassigned_until_accepted() -> None:
    case, _ = dispatch(
        _filed(), to=UNIT, assignee_level=Level.COUNTY, actor="d", at_ms=T0, deadlines=DEADLINES
    )
    again, _ = dispatch(
        case,
        to="person/li.na",
        assignee_level=Level.GRID,
        actor="d",
        at_ms=T0 + MIN,
        deadlines=DEADLINES,
    )
    assert again.assignee == "person/li.na" and again.dispatched_ms == T0  # the first dispatch
    assert again.deadline_ms == T0 + MIN + 15 * MIN and again.department is None
    with pytest.raises(ValueError):
        dispatch(
            case, to="nobody", assignee_level=Level.GRID, actor="d", at_ms=T0, deadlines=DEADLINES
        )


def test_send_back_returns_to_accepted_and_counts() -> None:
    case = _through_handled()
    back, ev = send_back(
        case, actor="li.na", note="仍有积水", at_ms=T0 + 70 * MIN, deadlines=DEADLINES
    )
    assert (back.state, back.step, back.sent_back_count) == (CaseState.ACCEPTED, CaseStep.ARRIVE, 1)
    assert back.deadline_ms == T0 + 70 * MIN + 30 * MIN and back.position is None
    assert ev.action is CaseAction.SENT_BACK and ev.detail == "仍有积水"
    assert back.handler == case.handler  # the same handler goes again
    back, _ = arrive(
        back, actor="w", position=Position(lat=1, lon=1), at_ms=T0 + 80 * MIN, deadlines=DEADLINES
    )
    back, _ = handle(back, actor="w", note="again", at_ms=T0 + 90 * MIN, deadlines=DEADLINES)
    assert back.handled_ms == T0 + H  # the first time it was handled
    back, _ = send_back(back, actor="li.na", note="no", at_ms=T0 + 95 * MIN, deadlines=DEADLINES)
    assert back.sent_back_count == 2


def test_deadlines_follow_the_severity() -> None:
    info = _filed(Severity.INFO)
    assert info.deadline_ms == T0 + 24 * H
    warning = _filed(Severity.WARNING)
    assert warning.deadline_ms == T0 + 2 * H
    assert DEADLINES.of(Severity.INFO, CaseStep.HANDLE) == 7 * 24 * H


def test_overdue_is_strictly_after_the_deadline() -> None:
    case = _filed()  # deadline T0 + 10 min
    assert not overdue(case, T0 + 10 * MIN)
    assert overdue(case, T0 + 10 * MIN + 1)
    with pytest.raises(InvalidTransition):
        supervise(case, T0 + 10 * MIN, DEADLINES)


def test_supervision_climbs_one_level_per_overdue_up_to_the_city() -> None:
    case, _ = dispatch(
        _filed(),
        to="person/li.na",
        assignee_level=Level.GRID,
        actor="d",
        at_ms=T0,
        deadlines=DEADLINES,
    )
    assert case.deadline_ms == T0 + 15 * MIN  # accept within 15 minutes
    now = T0 + 16 * MIN
    case, ev = supervise(case, now, DEADLINES)
    assert case.supervised and case.supervision_level is Level.VILLAGE
    assert case.deadline_ms == now + 15 * MIN  # the same step's time again
    assert case.state is CaseState.DISPATCHED and case.step is CaseStep.ACCEPT
    assert ev.action is CaseAction.SUPERVISED and ev.actor is None and "village v1" in ev.detail
    expected = [Level.TOWNSHIP, Level.COUNTY, Level.CITY, Level.CITY]
    for level in expected:
        assert not overdue(case, now + 15 * MIN)
        now += 15 * MIN + 1
        case, _ = supervise(case, now, DEADLINES)
        assert case.supervision_level is level and case.deadline_ms == now + 15 * MIN


def test_supervision_starts_above_the_assignees_level() -> None:
    case, _ = dispatch(
        _filed(), to=UNIT, assignee_level=Level.COUNTY, actor="d", at_ms=T0, deadlines=DEADLINES
    )
    case, _ = supervise(case, T0 + 15 * MIN + 1, DEADLINES)
    assert case.supervision_level is Level.CITY
    # Not dispatched in time: the level above its grid takes it up.
    filed, _ = supervise(_filed(), T0 + 10 * MIN + 1, DEADLINES)
    assert filed.supervision_level is Level.VILLAGE
    assert filed.deadline_ms == T0 + 10 * MIN + 1 + 10 * MIN


def test_deadlines_are_strict() -> None:
    with pytest.raises(ValueError):
        CaseDeadlines.model_validate({"critical": {**STEPS, "verify": "1h", "close": "0s"}})
    with pytest.raises(ValueError):
        CaseDeadlines.model_validate(
            {s: {**STEPS, "verify": "1h", "close": "1h", "typo": "1h"} for s in Severity}
        )


def test_assignee_keys() -> None:
    assert parse_assignee("person/li.na") == ("person", "li.na", "")
    assert parse_assignee("department/flood_hq/430502") == ("department", "flood_hq", "430502")
    for bad in ("person/", "department/x", "team/x", "person/a/b"):
        with pytest.raises(ValueError):
            parse_assignee(bad)
