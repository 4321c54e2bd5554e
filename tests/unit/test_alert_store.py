"""The alert store on a real SQLite file: one unresolved alert per (rule, device), history,
filters, engine state, and a second store on the same file sees it all (a restart)."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from devices.kinds import Kind, Level
from rules.alerts import (
    AUTO,
    Alert,
    AlertAction,
    AlertEvent,
    AlertState,
    acknowledge,
    open_alert,
    repeat,
    resolve,
)
from rules.model import Severity
from rules.store import AlertStore, sqlite_url

T0 = 1_795_000_000_000


def areas(grid: str) -> dict[Level, str]:
    village = grid.split("-")[0]
    return {
        Level.GRID: grid,
        Level.VILLAGE: village,
        Level.TOWNSHIP: village[:9],
        Level.COUNTY: village[:6],
        Level.CITY: "430500",
    }


def new(
    rule: str, device: str, grid: str = "430502001001-01", at: int = T0
) -> tuple[Alert, AlertEvent]:
    return open_alert(
        rule_id=rule,
        severity=Severity.MAJOR,
        device_id=device,
        kind=Kind.RIVER,
        areas=areas(grid),
        at_ms=at,
        value=1.0,
        detail="d",
    )


@pytest.fixture
def store(tmp_path: Path) -> Iterator[AlertStore]:
    s = AlertStore(sqlite_url(tmp_path))
    yield s
    s.close()


def test_lifecycle_with_history_in_order(store: AlertStore) -> None:
    alert, opened = new("r", "d1")
    store.insert(alert, opened)
    for i in range(3):
        alert, ev = repeat(alert, T0 + i + 1, 2.0 + i, "again")
        store.update(alert, ev)
    alert, ev = acknowledge(alert, "li.na", T0 + 10)
    store.update(alert, ev)
    alert, ev = resolve(alert, AUTO, T0 + 20)
    store.update(alert, ev)
    stored = store.get(alert.id)
    assert stored == alert and stored.repeat_count == 3 and stored.resolved_by == "auto"
    actions = [e.action for e in store.history(alert.id)]
    assert actions == [
        AlertAction.OPENED,
        *[AlertAction.REPEATED] * 3,
        AlertAction.ACKNOWLEDGED,
        AlertAction.RESOLVED,
    ]


def test_one_unresolved_alert_per_rule_and_device(store: AlertStore) -> None:
    first, ev = new("r", "d1")
    store.insert(first, ev)
    second, ev2 = new("r", "d1", at=T0 + 5)
    with pytest.raises(ValueError, match="already has alert"):
        store.insert(second, ev2)
    other, ev3 = new("r", "d2")
    store.insert(other, ev3)  # another device is another alert
    done, ev4 = resolve(first, "x", T0 + 6)
    store.update(done, ev4)
    assert store.not_resolved("r", "d1") is None
    store.insert(second, ev2)  # allowed once the first is resolved
    assert store.not_resolved("r", "d1") == second


def test_filters(store: AlertStore) -> None:
    a, e = new("flood", "d1", "430502001001-01", T0)
    b, f = new("flood", "d2", "430503100002-02", T0 + 1)
    c, g = new("quality", "d3", "430502001001-02", T0 + 2)
    for alert, ev in ((a, e), (b, f), (c, g)):
        store.insert(alert, ev)
    acked, ev = acknowledge(c, "w", T0 + 3)
    store.update(acked, ev)
    assert [x.id for x in store.list()] == [c.id, b.id, a.id]  # newest first
    assert {x.id for x in store.list(area_id="430502")} == {a.id, c.id}  # county
    assert {x.id for x in store.list(area_id="430502001001-01")} == {a.id}  # grid
    assert {x.id for x in store.list(area_id="430500")} == {a.id, b.id, c.id}  # city
    assert {x.id for x in store.list(rule_id="flood")} == {a.id, b.id}
    assert [x.id for x in store.list(states=[AlertState.ACKNOWLEDGED])] == [c.id]
    assert {x.id for x in store.list(since_ms=T0 + 1)} == {b.id, c.id}
    assert store.count_by_state() == {"open": 2, "acknowledged": 1}


def test_state_and_alerts_survive_a_new_store_on_the_same_file(tmp_path: Path) -> None:
    first = AlertStore(sqlite_url(tmp_path))
    alert, ev = new("r", "d1")
    first.insert(alert, ev)
    first.save_state("engine", {"format": 1, "devices": {"d1": {"newest_ts": T0}}}, T0)
    first.save_state("engine", {"format": 1, "devices": {}}, T0 + 1)  # replaced, not added
    first.close()
    second = AlertStore(sqlite_url(tmp_path))
    assert second.not_resolved("r", "d1") == alert
    assert second.load_state("engine") == {"format": 1, "devices": {}}
    assert second.load_state("nothing") is None
    second.close()


def test_the_database_itself_refuses_a_second_unresolved_alert(store: AlertStore) -> None:
    from sqlalchemy.exc import IntegrityError

    from rules.store import _row, alerts

    first, ev = new("r", "d1")
    store.insert(first, ev)
    racing, _ = new("r", "d1", at=T0 + 1)  # as if another writer skipped the check
    with pytest.raises(IntegrityError), store._engine.begin() as conn:
        conn.execute(alerts.insert().values(**_row(racing)))
