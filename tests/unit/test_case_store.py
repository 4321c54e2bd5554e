"""The case store on a real SQLite file and on a real PostgreSQL 15 (each test runs on both):
history, filters and their order, one case per alert, steps under a row lock (two people at
once: one wins), the overdue sweep with its announcements, the alerts' auto-filing hook in the
alert's transaction, and statistics equal to what this test computes from the cases it made."""

from __future__ import annotations

import json
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select

from devices.kinds import Kind, Level
from ingest.alerts.database import announcements
from ingest.alerts.store import AlertStore, sqlite_url
from ingest.cases.announce import case_messages
from ingest.cases.filing import CaseFiler
from ingest.cases.stats import GroupBy, group
from ingest.cases.store import CaseExists, CaseNotFound, CaseQuery, CaseStore, Viewer
from rules.alerts import AlertAction, AlertEvent
from rules.cases import (
    Case,
    CaseAction,
    CaseEvent,
    CaseSource,
    CaseState,
    InvalidTransition,
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
from rules.loader import parse_rules
from rules.model import Severity
from tests.postgres import drop_database, new_database
from tests.unit.casecity import case_config, registry

T0 = 1_795_000_000_000
MIN = 60_000
REG = registry()
DEADLINES = case_config().deadlines
PATHS = {g: {a.level: a.id for a in REG.path_of(g).areas} for g in ("g1", "g2", "g3")}
UNIT1 = "department/flood_hq/co1"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database: a SQLite file, or a database of its own on the session's PostgreSQL."""
    if request.param == "sqlite":
        yield sqlite_url(tmp_path)
        return
    fresh = new_database(request.getfixturevalue("postgres_url"))
    yield fresh
    drop_database(fresh)


@pytest.fixture
def store(url: str) -> Iterator[CaseStore]:
    AlertStore(url).close()  # the same database as the alerts
    cases = CaseStore(url)
    yield cases
    cases.close()


def _announce(changes: list[tuple[Case, CaseEvent]]) -> list[tuple[str, bytes]]:
    return case_messages(changes, REG, T0)


def _new(
    store: CaseStore,
    grid: str = "g1",
    at_ms: int = T0,
    severity: Severity = Severity.CRITICAL,
    alert_id: str | None = None,
) -> Case:
    case, first = file_case(
        title=f"case in {grid}",
        source=CaseSource.REPORT,
        severity=severity,
        areas=PATHS[grid],
        reporter="li.na",
        reporter_person="li.na",
        at_ms=at_ms,
        deadlines=DEADLINES,
        alert_id=alert_id,
    )
    store.create(case, first, _announce)
    return case


def _step(store: CaseStore, case_id: str, name: str, at_ms: int, **kw: object) -> Case:
    steps = {
        "dispatch": lambda c: dispatch(
            c,
            to=str(kw.get("to", UNIT1)),
            assignee_level=Level.COUNTY,
            actor="duty",
            at_ms=at_ms,
            deadlines=DEADLINES,
        ),
        "accept": lambda c: accept(
            c, actor="wang", handler="wang.qiang", at_ms=at_ms, deadlines=DEADLINES
        ),
        "arrive": lambda c: arrive(
            c, actor="wang", position=Position(lat=1, lon=2), at_ms=at_ms, deadlines=DEADLINES
        ),
        "handle": lambda c: handle(c, actor="wang", note="done", at_ms=at_ms, deadlines=DEADLINES),
        "verify": lambda c: verify(c, actor="li.na", at_ms=at_ms, deadlines=DEADLINES),
        "send_back": lambda c: send_back(
            c, actor="li.na", note="again", at_ms=at_ms, deadlines=DEADLINES
        ),
        "close": lambda c: close(c, actor="duty", at_ms=at_ms),
    }
    changed, _ = store.transition(case_id, steps[name], _announce)
    return changed


def _outbox(url: str) -> list[tuple[str, dict[str, object]]]:
    engine = create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(
            select(announcements.c.topic, announcements.c.payload).order_by(announcements.c.id)
        ).all()
    engine.dispose()
    return [(str(t), json.loads(p)) for t, p in rows]


def test_a_case_and_its_history_survive_a_second_store(store: CaseStore, url: str) -> None:
    case = _new(store)
    for i, name in enumerate(["dispatch", "accept", "arrive", "handle", "verify", "close"]):
        _step(store, case.id, name, T0 + (i + 1) * MIN)
    again = CaseStore(url)
    found = again.get(case.id)
    assert found is not None and found.state is CaseState.CLOSED
    assert [e.action for e in again.history(case.id)] == [
        CaseAction.FILED,
        CaseAction.DISPATCHED,
        CaseAction.ACCEPTED,
        CaseAction.ARRIVED,
        CaseAction.HANDLED,
        CaseAction.VERIFIED,
        CaseAction.CLOSED,
    ]
    assert again.get("C-000000000000") is None
    with pytest.raises(CaseNotFound):
        _step(again, "C-000000000000", "accept", T0)
    # Every step was announced in its own transaction: the unit, the reporter, the handler
    # (once accepted) and the grid.
    topics = [t for t, _ in _outbox(url)]
    assert topics[:2] == ["cases/person/li.na", "cases/grid/g1"]  # filed
    assert "cases/department/flood_hq/co1" in topics and "cases/person/wang.qiang" in topics
    assert len([t for t in topics if t == "cases/grid/g1"]) == 7
    again.close()


def test_a_step_out_of_order_leaves_the_case_as_it_was(store: CaseStore) -> None:
    case = _new(store)
    with pytest.raises(InvalidTransition):
        _step(store, case.id, "accept", T0 + MIN)
    assert store.get(case.id) == case and len(store.history(case.id)) == 1


def test_one_case_per_alert(store: CaseStore) -> None:
    first = _new(store, alert_id="A-000000000001")
    with pytest.raises(CaseExists) as e:
        _new(store, alert_id="A-000000000001")
    assert e.value.case_id == first.id
    assert store.of_alert("A-000000000001") == first.id
    _new(store)
    _new(store)  # cases without an alert do not collide


def test_two_people_accepting_at_once_one_wins(store: CaseStore) -> None:
    case = _new(store)
    _step(store, case.id, "dispatch", T0 + MIN)
    results: list[str] = []
    inside = threading.Barrier(2)

    def take(who: str) -> None:
        def slow_accept(c: Case) -> tuple[Case, CaseEvent]:
            time.sleep(0.2)  # hold the lock while the other one tries
            return accept(c, actor=who, handler=who, at_ms=T0 + 2 * MIN, deadlines=DEADLINES)

        inside.wait()
        try:
            store.transition(case.id, slow_accept)
            results.append(f"{who}:ok")
        except InvalidTransition:
            results.append(f"{who}:refused")

    threads = [threading.Thread(target=take, args=(w,)) for w in ("wang.qiang", "sun.li")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.split(":")[1] for r in results) == ["ok", "refused"]
    winner = next(r.split(":")[0] for r in results if r.endswith(":ok"))
    stored = store.get(case.id)
    assert stored is not None and stored.handler == winner
    assert [e.action for e in store.history(case.id)].count(CaseAction.ACCEPTED) == 1


def test_filters_and_the_order_of_a_list(store: CaseStore) -> None:
    old = _new(store, "g1", T0)  # dispatch deadline T0 + 10 min
    late = _new(store, "g2", T0 + MIN)  # T0 + 11 min
    far = _new(store, "g3", T0 + 2 * MIN, Severity.INFO)
    _step(store, far.id, "dispatch", T0 + 3 * MIN, to="department/flood_hq/co2")
    done = _new(store, "g1", T0 + 4 * MIN)
    for i, name in enumerate(["dispatch", "accept", "arrive", "handle", "verify", "close"]):
        _step(store, done.id, name, T0 + (5 + i) * MIN)
    now = T0 + 10 * MIN + 30_000  # `old` is overdue, `late` not yet
    ids = [c.id for c in store.list(CaseQuery(), now)]
    assert ids == [old.id, late.id, far.id, done.id]  # overdue, by deadline, none last
    assert [c.id for c in store.list(CaseQuery(overdue=True), now)] == [old.id]
    assert [c.id for c in store.list(CaseQuery(area="co2"), now)] == [far.id]
    assert [c.id for c in store.list(CaseQuery(area="v1", states=[CaseState.FILED]), now)] == [
        old.id,
        late.id,
    ]
    unit2 = "department/flood_hq/co2"
    assert [c.id for c in store.list(CaseQuery(assignee=unit2), now)] == [far.id]
    assert len(store.list(CaseQuery(limit=2), now)) == 2
    # A grid worker of g3 sees its grid; the co2 unit sees what is assigned to it; li.na
    # sees what she reported; someone else sees nothing.
    g3 = Viewer(areas=frozenset({"g3"}))
    assert [c.id for c in store.list(CaseQuery(visible_to=g3), now)] == [far.id]
    staff = Viewer(keys=frozenset({unit2, "person/chen.jie"}), person="chen.jie")
    assert [c.id for c in store.list(CaseQuery(visible_to=staff), now)] == [far.id]
    reporter = Viewer(person="li.na")
    assert len(store.list(CaseQuery(visible_to=reporter), now)) == 4
    assert (
        store.list(CaseQuery(visible_to=Viewer(person="nobody", token="0123456789ab")), now) == []
    )
    # Mine: assigned to my keys, or handled by me.
    mine = Viewer(keys=frozenset({"person/wang.qiang"}), person="wang.qiang")
    assert [c.id for c in store.list(CaseQuery(mine=mine), now)] == [done.id]
    assert [c.id for c in store.list(CaseQuery(mine=staff), now)] == [far.id]


def test_the_overdue_sweep_supervises_and_announces(store: CaseStore, url: str) -> None:
    case = _new(store, "g1", T0)
    _step(store, case.id, "dispatch", T0 + MIN)  # accept by T0 + 16 min
    calm = _new(store, "g3", T0 + 10 * MIN)  # dispatch by T0 + 20 min
    assert store.supervise_overdue(T0 + 16 * MIN, DEADLINES, _announce) == []
    done = store.supervise_overdue(T0 + 16 * MIN + 1, DEADLINES, _announce)
    assert [(c.id, c.supervision_level, e.action) for c, e in done] == [
        (case.id, Level.CITY, CaseAction.SUPERVISED)  # a county unit: the city supervises
    ]
    stored = store.get(case.id)
    assert stored is not None and stored.supervised
    assert stored.deadline_ms == T0 + 16 * MIN + 1 + 15 * MIN
    assert store.get(calm.id) == calm
    told = [(t, p) for t, p in _outbox(url) if p["event"]["action"] == "supervised"]  # type: ignore[index]
    assert [t for t, _ in told] == [
        "cases/department/flood_hq/co1",
        "cases/person/li.na",
        "cases/grid/g1",
        "cases/city/c",
    ]
    payload = told[0][1]
    assert payload["case"]["supervised"] is True  # type: ignore[index]
    assert "超时督办" in str(payload["message_zh"]) and "supervised" in str(payload["message_en"])
    # Once more only when the new deadline passes too.
    assert store.supervise_overdue(T0 + 20 * MIN, DEADLINES, _announce) == []


RULES = {
    "rules": [
        {
            "id": "gate_forced",
            "name": "Gate forced open",
            "name_zh": "门禁被强行打开",
            "type": "event",
            "events": ["forced_open"],
            "severity": "major",
            "kinds": ["gate"],
            "case": "auto",
        },
        {
            "id": "gate_tailgating",
            "name": "Tailgating",
            "name_zh": "尾随",
            "type": "event",
            "events": ["tailgating"],
            "severity": "warning",
            "kinds": ["gate"],
        },
    ]
}


def test_the_auto_filing_hook_files_in_the_alerts_transaction(store: CaseStore, url: str) -> None:
    rules = parse_rules(RULES, "<test>", REG)
    alerts = AlertStore(url)
    opened = []
    for rule in ("gate_forced", "gate_tailgating"):
        alert, event, _ = alerts.open_or_repeat(
            rule_id=rule,
            device_id="gate9",
            severity=Severity.MAJOR,
            kind=Kind.GATE,
            areas=PATHS["g3"],
            ts_ms=T0,
            value="forced_open",
            detail="forced open",
        )
        opened.append((alert, event))
    repeat = AlertEvent(alert_id=opened[0][0].id, at_ms=T0 + 1, action=AlertAction.REPEATED)
    filer = CaseFiler(DEADLINES, REG)
    engine = create_engine(url)
    with engine.begin() as conn:
        filer(conn, [*opened, (opened[0][0], repeat)], rules, T0 + 5)
    with engine.begin() as conn:  # the same alert again: it has its case already
        filer(conn, opened[:1], rules, T0 + 6)
    with pytest.raises(RuntimeError), engine.begin() as conn:  # rolled back with the alert's
        filer(
            conn,
            [
                (
                    opened[1][0].model_copy(update={"rule_id": "gate_forced", "id": "A-x"}),
                    opened[1][1],
                )
            ],
            rules,
            T0,
        )
        raise RuntimeError("the alert's transaction failed")
    engine.dispose()
    alerts.close()
    found = store.list(CaseQuery(), T0)
    assert len(found) == 1
    case = found[0]
    assert (case.alert_id, case.rule_id, case.device_id) == (
        opened[0][0].id,
        "gate_forced",
        "gate9",
    )
    assert case.source is CaseSource.ALERT and case.reporter == "auto"
    assert case.severity is Severity.MAJOR and case.areas == PATHS["g3"]
    assert (case.lat, case.lon) == (27.3, 111.5) and case.title == "门禁被强行打开：小区门"
    assert case.deadline_ms == T0 + 5 + 10 * MIN
    assert [e.action for e in store.history(case.id)] == [CaseAction.FILED]
    assert [t for t, p in _outbox(url) if "case" in p] == ["cases/grid/g3"]


def test_statistics_equal_what_the_cases_say(store: CaseStore) -> None:
    made: list[str] = []
    plans = [
        ("g1", UNIT1, ["dispatch", "accept", "arrive", "handle", "verify", "close"], False),
        ("g1", UNIT1, ["dispatch", "accept", "arrive", "handle"], True),
        ("g2", UNIT1, ["dispatch", "accept", "arrive", "handle", "send_back"], False),
        ("g3", "department/flood_hq/co2", ["dispatch", "accept"], False),
        ("g3", "person/zhao.min", ["dispatch", "accept", "arrive", "handle", "verify"], False),
        ("g1", "department/urban/co1", ["dispatch"], False),
        ("g2", None, [], False),
    ]
    for n, (grid, to, steps, late) in enumerate(plans):
        case = _new(store, grid, T0 + n * MIN)
        at = T0 + n * MIN
        for i, name in enumerate(steps):
            at += (i + 1) * 7_000 * (n + 1)
            _step(store, case.id, name, at, to=to)
            if late and name == "arrive":
                store.supervise_overdue(at + 3 * 3_600_000, DEADLINES)
        made.append(case.id)
    cases = [c for c in (store.get(i) for i in made) if c is not None]
    assert len(cases) == len(plans)
    by_dept = {
        g.key: g
        for g in group(store.created_between(None, None), GroupBy.DEPARTMENT, Level.COUNTY, REG)
    }
    assert set(by_dept) == {"flood_hq", "urban", "-"}
    for key, g in by_dept.items():
        mine = [c for c in cases if (c.department or "-") == key]
        assert g.total == len(mine) == sum(g.by_state.values())
        for state in CaseState:
            assert g.by_state[state] == sum(1 for c in mine if c.state is state)
        done = [
            c for c in mine if c.state in (CaseState.HANDLED, CaseState.VERIFIED, CaseState.CLOSED)
        ]
        assert g.on_time_rate == (
            sum(1 for c in done if not c.supervised) / len(done) if done else None
        )
        times = [
            (c.handled_ms - c.dispatched_ms) / 1000
            for c in mine
            if c.handled_ms is not None and c.dispatched_ms is not None
        ]
        assert g.median_handle_s == (statistics.median(times) if times else None)
        assert g.sent_back == sum(c.sent_back_count for c in mine)
    assert by_dept["flood_hq"].name == "防汛抗旱指挥部" and by_dept["flood_hq"].total == 4
    # Handled or later: the closed one (on time) and the supervised one; the one sent back is
    # no longer handled.
    assert by_dept["flood_hq"].on_time_rate == 0.5
    assert by_dept["flood_hq"].sent_back == 1
    by_area = {g.key: g for g in group(cases, GroupBy.AREA, Level.COUNTY, REG)}
    assert {k: g.total for k, g in by_area.items()} == {"co1": 5, "co2": 2}
    assert by_area["co1"].name == "区一"
    # since/until bound the creation time.
    assert len(store.created_between(T0 + MIN, T0 + 3 * MIN)) == 2
