"""The alert lifecycle as pure steps: what may happen, in which order, and what is recorded."""

import pytest

from devices.kinds import Kind, Level
from rules.alerts import (
    AUTO,
    Alert,
    AlertAction,
    AlertState,
    InvalidTransition,
    acknowledge,
    due_for_escalation,
    escalate,
    open_alert,
    repeat,
    resolve,
)
from rules.model import Severity

AREAS = {
    Level.GRID: "g",
    Level.VILLAGE: "v",
    Level.TOWNSHIP: "t",
    Level.COUNTY: "co",
    Level.CITY: "c",
}
T0 = 1_795_000_000_000


def opened() -> Alert:
    alert, event = open_alert(
        rule_id="river_over_warning",
        severity=Severity.MAJOR,
        device_id="r1",
        kind=Kind.RIVER,
        areas=AREAS,
        at_ms=T0,
        value=211.7,
        detail="water_level_m 211.7 > 211.5",
    )
    assert event.action is AlertAction.OPENED and event.alert_id == alert.id
    return alert


def test_open_repeat_acknowledge_resolve() -> None:
    alert = opened()
    assert alert.state is AlertState.OPEN and alert.topics == ["alerts/grid/g"]
    for i in range(3):
        alert, event = repeat(alert, T0 + 1000 * (i + 1), 211.8 + i / 10, "still high")
        assert event.action is AlertAction.REPEATED
    assert alert.repeat_count == 3 and alert.value == pytest.approx(212.0)
    alert, event = acknowledge(alert, "wang.wei", T0 + 5000, "on my way")
    assert alert.state is AlertState.ACKNOWLEDGED and alert.acknowledged_by == "wang.wei"
    assert event.actor == "wang.wei" and event.detail == "on my way"
    alert, event = resolve(alert, "wang.wei", T0 + 9000)
    assert alert.state is AlertState.RESOLVED and alert.resolved_ms == T0 + 9000
    assert alert.opened_ms == T0  # history keeps its start


def test_automatic_resolution_is_recorded_as_such() -> None:
    alert, event = resolve(opened(), AUTO, T0 + 60_000, "back below 211.4")
    assert alert.resolved_by == "auto" and event.actor == "auto"


@pytest.mark.parametrize("step", ["repeat", "acknowledge", "resolve", "escalate"])
def test_nothing_happens_to_a_resolved_alert(step: str) -> None:
    alert, _ = resolve(opened(), AUTO, T0 + 1)
    with pytest.raises(InvalidTransition, match="resolved"):
        if step == "repeat":
            repeat(alert, T0 + 2, 1.0, "")
        elif step == "acknowledge":
            acknowledge(alert, "x", T0 + 2)
        elif step == "resolve":
            resolve(alert, "x", T0 + 2)
        else:
            escalate(alert, T0 + 2)


def test_acknowledging_twice_is_refused() -> None:
    alert, _ = acknowledge(opened(), "a", T0 + 1)
    with pytest.raises(InvalidTransition, match="already acknowledged by a"):
        acknowledge(alert, "b", T0 + 2)


def test_escalation_walks_up_to_the_city_and_stops() -> None:
    alert = opened()
    seen = []
    for i in range(4):
        alert, event = escalate(alert, T0 + (i + 1) * 600_000)
        seen.append(alert.escalation_level)
        assert event.action is AlertAction.ESCALATED
    assert seen == [Level.VILLAGE, Level.TOWNSHIP, Level.COUNTY, Level.CITY]
    assert alert.audiences == ("grid/g", "village/v", "township/t", "county/co", "city/c")
    with pytest.raises(InvalidTransition, match="top"):
        escalate(alert, T0 + 3_000_000)


def test_due_for_escalation_boundaries() -> None:
    alert = opened()
    ten_min = 600_000
    assert not due_for_escalation(alert, ten_min, T0 + ten_min - 1)
    assert due_for_escalation(alert, ten_min, T0 + ten_min)  # exactly at escalate_after
    assert not due_for_escalation(alert, None, T0 + 10 * ten_min)  # rule never escalates
    up, _ = escalate(alert, T0 + ten_min)
    assert not due_for_escalation(up, ten_min, T0 + 2 * ten_min - 1)  # timed from last move
    assert due_for_escalation(up, ten_min, T0 + 2 * ten_min)
    acked, _ = acknowledge(alert, "a", T0 + 1)
    assert not due_for_escalation(acked, ten_min, T0 + 100 * ten_min)


def test_escalation_counts_from_when_it_was_raised_not_from_device_time() -> None:
    # Read from the broker's backlog an hour after the device saw it: nobody has been waiting.
    hour, ten_min = 3_600_000, 600_000
    alert, _ = open_alert(
        rule_id="gate_forced_open",
        severity=Severity.MAJOR,
        device_id="g1",
        kind=Kind.GATE,
        areas=AREAS,
        at_ms=T0,
        value="forced_open",
        detail="",
        raised_ms=T0 + hour,
    )
    assert alert.opened_ms == T0 and alert.raised_ms == T0 + hour
    assert not due_for_escalation(alert, ten_min, T0 + hour + ten_min - 1)
    assert due_for_escalation(alert, ten_min, T0 + hour + ten_min)
