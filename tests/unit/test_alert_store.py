"""The alert store on a real SQLite file and on a real PostgreSQL 15 (each test that takes
``url`` or ``store`` runs on both, a fresh database each): the lifecycle through the store, one
unresolved alert per (rule, device), invalid steps, escalation, filters, engine state, and a
second store on the same database sees it all (a restart)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.schema import CreateIndex, CreateTable

from devices.kinds import Kind, Level
from devices.registry import Registry, parse_registry
from ingest.alerts.database import alerts, metadata, row_of
from ingest.alerts.store import AlertNotFound, AlertStore, StoreTransition, sqlite_url
from rules.alerts import (
    AUTO,
    Alert,
    AlertAction,
    AlertState,
    InvalidTransition,
    acknowledge,
    area_ids,
    due_for_escalation,
    escalate,
    open_alert,
)
from rules.model import Severity
from rules.transition import Reason, Transition
from tests.postgres import drop_database, new_database

T0 = 1_795_000_000_000
MIN = 60_000


def _registry() -> Registry:
    """One city, two counties; grids g1, g2 share a village, g3 is in the other county."""
    areas: list[dict[str, Any]] = [
        {"id": "c", "name": "市", "level": "city"},
        {"id": "co1", "name": "区一", "level": "county", "parent": "c"},
        {"id": "co2", "name": "区二", "level": "county", "parent": "c"},
        {"id": "t1", "name": "街道一", "level": "township", "parent": "co1"},
        {"id": "t2", "name": "街道二", "level": "township", "parent": "co2"},
        {"id": "v1", "name": "社区一", "level": "village", "parent": "t1"},
        {"id": "v2", "name": "社区二", "level": "village", "parent": "t2"},
        {"id": "g1", "name": "网格一", "level": "grid", "parent": "v1"},
        {"id": "g2", "name": "网格二", "level": "grid", "parent": "v1"},
        {"id": "g3", "name": "网格三", "level": "grid", "parent": "v2"},
    ]
    at = {"lat": 27.2, "lon": 111.4}
    river = {"river": "资江", "normal_level_m": 1, "warning_level_m": 2, "guarantee_level_m": 3}
    devices: list[dict[str, Any]] = [
        {"id": "r1", "kind": "river", "name": "站一", "grid": "g1", **at, **river},
        {"id": "r2", "kind": "river", "name": "站二", "grid": "g2", **at, **river},
        {"id": "r3", "kind": "river", "name": "站三", "grid": "g3", **at, **river},
    ]
    return parse_registry({"areas": areas, "devices": devices})


REGISTRY = _registry()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database: a SQLite file, or a database of its own on the session's PostgreSQL
    (started only when a test asks for it)."""
    if request.param == "sqlite":
        yield sqlite_url(tmp_path)
        return
    fresh = new_database(request.getfixturevalue("postgres_url"))
    yield fresh
    drop_database(fresh)


@pytest.fixture
def store(url: str) -> Iterator[AlertStore]:
    s = AlertStore(url)
    yield s
    s.close()


def fire(
    store: AlertStore,
    device: str = "r1",
    ts: int = T0,
    *,
    rule: str = "river_over_warning",
    value: float | str | None = 211.7,
    severity: Severity = Severity.MAJOR,
    flapping: bool = False,
    check: bool = True,
) -> tuple[Alert, bool]:
    alert, event, created = store.open_or_repeat(
        rule_id=rule,
        device_id=device,
        severity=severity,
        kind=Kind.RIVER,
        areas=area_ids(REGISTRY.device_path(device)),
        ts_ms=ts,
        value=value,
        detail=f"water_level_m {value}",
        flapping=flapping,
    )
    assert event.alert_id == alert.id and event.at_ms == ts
    if check:
        assert store.get(alert.id) == alert  # what came back is what was stored
    return alert, created


# -- the lifecycle --------------------------------------------------------------------------


def test_open_repeat_acknowledge_resolve_with_history_in_order(store: AlertStore) -> None:
    alert, created = fire(store)
    assert created and alert.state is AlertState.OPEN and alert.id.startswith("A-")
    assert alert.areas == {
        Level.GRID: "g1",
        Level.VILLAGE: "v1",
        Level.TOWNSHIP: "t1",
        Level.COUNTY: "co1",
        Level.CITY: "c",
    }
    for i in range(3):
        again, created = fire(store, ts=T0 + (i + 1) * MIN, value=211.8 + i)
        assert not created and again.id == alert.id
    assert again.repeat_count == 3 and again.value == pytest.approx(213.8)
    assert again.opened_ms == T0 and again.updated_ms == T0 + 3 * MIN

    acked, event = store.acknowledge(alert.id, "li.na", T0 + 5 * MIN, "on my way")
    assert acked.state is AlertState.ACKNOWLEDGED and acked.acknowledged_by == "li.na"
    assert acked.acknowledged_ms == T0 + 5 * MIN and acked.note == "on my way"
    assert event.actor == "li.na" and event.detail == "on my way"
    done, event = store.resolve(alert.id, "li.na", T0 + 9 * MIN, "pump started")
    assert done.state is AlertState.RESOLVED and done.resolved_by == "li.na"
    assert done.resolved_ms == T0 + 9 * MIN and done.repeat_count == 3
    assert store.get(alert.id) == done

    history = store.history(alert.id)
    assert [(e.action, e.actor, e.at_ms) for e in history] == [
        (AlertAction.OPENED, None, T0),
        (AlertAction.REPEATED, None, T0 + MIN),
        (AlertAction.REPEATED, None, T0 + 2 * MIN),
        (AlertAction.REPEATED, None, T0 + 3 * MIN),
        (AlertAction.ACKNOWLEDGED, "li.na", T0 + 5 * MIN),
        (AlertAction.RESOLVED, "li.na", T0 + 9 * MIN),
    ]
    assert store.history("A-000000000000") == []


def test_automatic_resolution_is_recorded_as_auto(store: AlertStore) -> None:
    alert, _ = fire(store)
    result = store.resolve_auto("river_over_warning", "r1", T0 + MIN, "back below 211.4")
    assert result is not None
    done, event = result
    assert done.id == alert.id and done.state is AlertState.RESOLVED
    assert done.resolved_by == AUTO == "auto" and done.resolved_ms == T0 + MIN
    assert event.action is AlertAction.RESOLVED and event.actor == "auto"
    assert event.detail == "back below 211.4"
    # Nothing left to clear: a second clear, or one for a (rule, device) never open, is no-op.
    assert store.resolve_auto("river_over_warning", "r1", T0 + 2 * MIN, "") is None
    assert store.resolve_auto("river_over_warning", "r2", T0, "") is None
    assert len(store.history(alert.id)) == 2


def test_one_unresolved_alert_per_rule_and_device(store: AlertStore) -> None:
    first, _ = fire(store)
    for i in range(20):  # a flood of repeats keeps one alert
        assert fire(store, ts=T0 + i + 1)[0].id == first.id
    other_device, created = fire(store, "r2")
    other_rule, created_too = fire(store, rule="river_over_guarantee")
    assert created and created_too and len({first.id, other_device.id, other_rule.id}) == 3

    store.acknowledge(first.id, "w", T0 + MIN)  # acknowledged is not resolved: still repeats
    acked_repeat, created = fire(store, ts=T0 + 2 * MIN)
    assert not created and acked_repeat.id == first.id
    assert acked_repeat.state is AlertState.ACKNOWLEDGED and acked_repeat.repeat_count == 21

    store.resolve(first.id, "w", T0 + 3 * MIN)
    assert store.not_resolved("river_over_warning", "r1") is None
    second, created = fire(store, ts=T0 + 4 * MIN)  # only now a new alert
    assert created and second.id != first.id and second.repeat_count == 0
    assert store.not_resolved("river_over_warning", "r1") == second
    old = store.get(first.id)
    assert old is not None and old.state is AlertState.RESOLVED
    assert store.count_by_state() == {"open": 3, "acknowledged": 0, "resolved": 1}


def test_the_database_itself_refuses_a_second_unresolved_alert(store: AlertStore) -> None:
    fire(store)
    racing, opened = open_alert(  # as if another writer skipped the check
        rule_id="river_over_warning",
        severity=Severity.MAJOR,
        device_id="r1",
        kind=Kind.RIVER,
        areas=area_ids(REGISTRY.device_path("r1")),
        at_ms=T0 + 1,
        value=1.0,
        detail="",
    )
    with pytest.raises(IntegrityError), store._engine.begin() as conn:
        conn.execute(alerts.insert().values(**row_of(racing)))
    with pytest.raises(ValueError, match="already has alert"):
        store.insert(racing, opened)


def test_concurrent_writers_keep_one_alert(store: AlertStore) -> None:
    """Threads, as asyncio.to_thread uses them: every repeat counted, one alert."""
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        barrier.wait()
        try:
            for i in range(10):
                fire(store, ts=T0 + n * 100 + i, check=False)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    (only,) = store.open_alerts()
    assert only.repeat_count == 79 and len(store.history(only.id)) == 80


# -- invalid steps ----------------------------------------------------------------------------


def test_invalid_transitions_raise_and_write_nothing(store: AlertStore) -> None:
    alert, _ = fire(store)
    store.acknowledge(alert.id, "a", T0 + 1)
    with pytest.raises(InvalidTransition, match="already acknowledged by a"):
        store.acknowledge(alert.id, "b", T0 + 2)
    with pytest.raises(InvalidTransition, match="only open alerts escalate"):
        store.escalate(alert.id, T0 + 3)
    store.resolve(alert.id, "a", T0 + 4)
    before = (store.get(alert.id), store.history(alert.id))
    with pytest.raises(InvalidTransition, match="resolved"):
        store.acknowledge(alert.id, "b", T0 + 5)
    with pytest.raises(InvalidTransition, match="resolved"):
        store.resolve(alert.id, "b", T0 + 5)
    with pytest.raises(InvalidTransition, match="resolved"):
        store.escalate(alert.id, T0 + 5)
    assert (store.get(alert.id), store.history(alert.id)) == before
    assert issubclass(InvalidTransition, ValueError)


def test_unknown_alert_ids(store: AlertStore) -> None:
    assert store.get("A-nope") is None
    for call in (
        lambda: store.acknowledge("A-nope", "a", T0),
        lambda: store.resolve("A-nope", "a", T0),
        lambda: store.escalate("A-nope", T0),
    ):
        with pytest.raises(AlertNotFound, match="A-nope"):
            call()


# -- escalation -------------------------------------------------------------------------------


def test_escalation_walks_up_to_the_city_and_stops(store: AlertStore) -> None:
    alert, _ = fire(store)
    assert alert.escalation_level is Level.GRID and alert.escalated_ms is None
    levels = []
    for i in range(4):
        up, event = store.escalate(alert.id, T0 + (i + 1) * 10 * MIN)
        levels.append(up.escalation_level)
        assert up.escalated_ms == T0 + (i + 1) * 10 * MIN and up.state is AlertState.OPEN
        assert event.action is AlertAction.ESCALATED
    assert levels == [Level.VILLAGE, Level.TOWNSHIP, Level.COUNTY, Level.CITY]
    assert [e.detail for e in store.history(alert.id)][1:] == [
        "to village v1",
        "to township t1",
        "to county co1",
        "to city c",
    ]
    assert up.audiences == ("grid/g1", "village/v1", "township/t1", "county/co1", "city/c")
    with pytest.raises(InvalidTransition, match="top"):
        store.escalate(alert.id, T0 + 60 * MIN)
    assert store.get(alert.id) == up and not due_for_escalation(up, MIN, T0 + 10**9)


def test_due_for_escalation_boundaries() -> None:
    alert, _ = open_alert(
        rule_id="r",
        severity=Severity.CRITICAL,
        device_id="r1",
        kind=Kind.RIVER,
        areas=area_ids(REGISTRY.device_path("r1")),
        at_ms=T0,
        value=None,
        detail="",
    )
    after = 10 * MIN
    assert not due_for_escalation(alert, after, T0 + after - 1)
    assert due_for_escalation(alert, after, T0 + after)  # exactly at escalate_after
    assert not due_for_escalation(alert, None, T0 + 100 * after)  # the rule never escalates
    up, _ = escalate(alert, T0 + after + 5)  # timed from the last escalation from now on
    assert not due_for_escalation(up, after, T0 + 2 * after + 4)
    assert due_for_escalation(up, after, T0 + 2 * after + 5)
    acked, _ = acknowledge(alert, "a", T0 + 1)
    assert not due_for_escalation(acked, after, T0 + after)
    assert not due_for_escalation(acked, after, T0 + 1000 * after)  # acknowledged: never
    acked_up, _ = acknowledge(up, "a", T0 + after + 6)
    assert not due_for_escalation(acked_up, after, T0 + 1000 * after)


# -- flapping and engine transitions ----------------------------------------------------------


def test_flapping_marks_the_alert_without_counting_a_repeat(store: AlertStore) -> None:
    alert, _ = fire(store, value=212.0)
    held, created = fire(store, ts=T0 + MIN, value=211.0, flapping=True)
    assert not created and held.id == alert.id and held.flapping
    assert held.repeat_count == 0 and held.value == 212.0 and held.state is AlertState.OPEN
    again, _ = fire(store, ts=T0 + 2 * MIN, value=212.5)
    assert again.flapping and again.repeat_count == 1  # marked for the rest of its life
    assert [e.action for e in store.history(alert.id)] == [
        AlertAction.OPENED,
        AlertAction.FLAPPING,
        AlertAction.REPEATED,
    ]


def test_apply_maps_engine_transitions(store: AlertStore) -> None:
    areas = area_ids(REGISTRY.device_path("r1"))

    def apply(action: Any, ts: int, reason: Reason, value: float | None = 212.0) -> Any:
        t = Transition("river_over_warning", "r1", action, ts, value, f"{reason}", reason)
        return store.apply(t, severity=Severity.MAJOR, kind=Kind.RIVER, areas=areas)

    opened, event, created = apply("open", T0, Reason.THRESHOLD)
    assert created and event.action is AlertAction.OPENED
    assert apply("update", T0 + 1, Reason.THRESHOLD)[1].action is AlertAction.REPEATED
    assert apply("update", T0 + 2, Reason.FLAPPING)[1].action is AlertAction.FLAPPING
    done, event, created = apply("clear", T0 + 3, Reason.SETTLED, None)
    assert not created and done.id == opened.id and done.resolved_by == "auto"
    assert apply("clear", T0 + 4, Reason.CLEARED) is None
    # An "update" with nothing open (a person resolved it meanwhile) opens a new alert.
    reopened, _, created = apply("update", T0 + 5, Reason.THRESHOLD)
    assert created and reopened.id != opened.id
    # Escalation counts from the wall clock the store was given, device time stays as it was.
    t = Transition("gate_forced_open", "r1", "open", T0, "forced_open", "", Reason.EVENT)
    late, _, _ = store.apply(
        t, severity=Severity.MAJOR, kind=Kind.RIVER, areas=areas, now_ms=T0 + 3_600_000
    )
    assert late.opened_ms == T0 and late.raised_ms == T0 + 3_600_000
    assert store.get(late.id) == late


# -- reads ------------------------------------------------------------------------------------


def test_list_filters(store: AlertStore) -> None:
    a, _ = fire(store, "r1", T0, severity=Severity.MAJOR)  # g1 v1 t1 co1 c
    b, _ = fire(store, "r2", T0 + MIN, severity=Severity.CRITICAL)  # g2 v1 t1 co1 c
    c, _ = fire(store, "r3", T0 + 2 * MIN, rule="quality", severity=Severity.WARNING)  # g3 ... co2
    d, _ = fire(store, "r1", T0 + 3 * MIN, rule="quality", severity=Severity.WARNING)
    store.acknowledge(c.id, "w", T0 + 4 * MIN)
    store.resolve(d.id, "w", T0 + 5 * MIN)

    def ids(**filters: Any) -> list[str]:
        return [x.id for x in store.list(**filters)]

    assert ids() == [d.id, c.id, b.id, a.id]  # newest first
    assert ids(limit=2) == [d.id, c.id]
    assert ids(state=AlertState.OPEN) == [b.id, a.id]
    assert ids(state=AlertState.ACKNOWLEDGED) == [c.id]
    assert ids(state=[AlertState.OPEN, AlertState.RESOLVED]) == [d.id, b.id, a.id]
    assert ids(states=[AlertState.RESOLVED]) == [d.id]
    assert ids(severity=Severity.WARNING) == [d.id, c.id]
    assert ids(severity=[Severity.MAJOR, Severity.CRITICAL]) == [b.id, a.id]
    assert ids(area_id="g1") == [d.id, a.id]  # grid
    assert ids(area_id="g3") == [c.id]
    assert ids(area_id="v1") == [d.id, b.id, a.id]  # village
    assert ids(area_id="t2") == [c.id]  # township
    assert ids(area_id="co1") == [d.id, b.id, a.id]  # county
    assert ids(area_id="c") == [d.id, c.id, b.id, a.id]  # city
    assert ids(area_id="nowhere") == []
    assert ids(rule_id="quality") == [d.id, c.id]
    assert ids(device_id="r1") == [d.id, a.id] and ids(device_id="nobody") == []
    assert ids(since_ms=T0 + MIN) == [d.id, c.id, b.id]  # since: inclusive
    assert ids(until_ms=T0 + 2 * MIN) == [b.id, a.id]  # until: exclusive
    assert ids(since_ms=T0 + MIN, until_ms=T0 + 3 * MIN) == [c.id, b.id]
    assert ids(rule_id="quality", area_id="co1", state=AlertState.RESOLVED) == [d.id]
    assert [x.id for x in store.open_alerts()] == [a.id, b.id, c.id]  # oldest first
    assert store.count_by_state() == {"open": 2, "acknowledged": 1, "resolved": 1}


def test_empty_store_counts_every_state(store: AlertStore) -> None:
    assert store.count_by_state() == {"open": 0, "acknowledged": 0, "resolved": 0}
    assert store.list() == [] and store.open_alerts() == []


# -- engine state, restarts, other databases --------------------------------------------------


def test_state_save_load_round_trip(store: AlertStore) -> None:
    snapshot = {"format": 1, "devices": {"r1": {"newest_ts": T0, "seen": [[1, T0]]}}, "名": "资江"}
    assert store.load_state("engine") is None
    store.save_state("engine", snapshot, T0)
    assert store.load_state("engine") == snapshot
    store.save_state("engine", {"format": 1, "devices": {}})  # replaced, not added
    assert store.load_state("engine") == {"format": 1, "devices": {}}
    store.save_state("other", {"x": 1.5})
    assert store.load_state("other") == {"x": 1.5}
    assert store.load_state("engine") == {"format": 1, "devices": {}}


def test_the_store_runs_on_the_database_asked_for(url: str, store: AlertStore) -> None:
    assert store.dialect == make_url(url).get_backend_name()


def test_a_second_store_on_the_same_database_sees_everything(url: str) -> None:
    first = AlertStore(url)
    alert, _ = fire(first)
    fire(first, ts=T0 + 1)
    first.save_state("engine", {"format": 1, "devices": {"r1": {"newest_ts": T0 + 1}}}, T0 + 1)
    second = AlertStore(url)  # while the first is still open: WAL readers on SQLite
    assert second.get(alert.id) == first.get(alert.id)
    first.close()

    assert second.not_resolved("river_over_warning", "r1") == first.get(alert.id)
    assert len(second.history(alert.id)) == 2
    assert second.load_state("engine") == {"format": 1, "devices": {"r1": {"newest_ts": T0 + 1}}}
    again, created = fire(second, ts=T0 + 2)  # carries on with the same alert
    assert not created and again.id == alert.id and again.repeat_count == 2
    second.close()


def test_readers_do_not_wait_for_a_writer(url: str) -> None:
    writer, reader = AlertStore(url), AlertStore(url)
    alert, _ = fire(writer)
    with writer._write() as conn:  # a write transaction held open, as mid-method
        if writer.dialect == "sqlite":  # PostgreSQL's readers never wait for writers (MVCC)
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        conn.execute(alerts.update().values(state="resolved"))
        assert reader.get(alert.id) == alert  # not blocked, and sees the committed state only
        assert reader.count_by_state()["open"] == 1
    writer.close()
    reader.close()


def test_in_memory_url_is_shared_across_threads() -> None:
    store = AlertStore("sqlite://")
    alert, _ = fire(store)
    seen: list[Alert | None] = []
    t = threading.Thread(target=lambda: seen.append(store.get(alert.id)))
    t.start()
    t.join()
    assert seen == [alert]
    store.close()


def test_schema_is_portable_to_postgresql() -> None:
    """The same tables compile for PostgreSQL; the one-unresolved index is partial on both."""
    for dialect in (postgresql.dialect(), sqlite.dialect()):
        for table in metadata.sorted_tables:
            str(CreateTable(table).compile(dialect=dialect))
        (one,) = [i for i in alerts.indexes if i.name == "alerts_one_unresolved"]
        ddl = str(CreateIndex(one).compile(dialect=dialect))
        assert "UNIQUE" in ddl and "WHERE" in ddl and "resolved" in ddl
    body = str(CreateTable(alerts).compile(dialect=postgresql.dialect()))
    assert "BIGINT" in body and "JSON" in body


def test_commits_are_fsynced(tmp_path: Path) -> None:
    """Issue 13 item 4: a PUBACK follows the commit (alert changes and the engine's state), so
    the commit must survive a power cut: synchronous=FULL, not NORMAL."""
    store = AlertStore(sqlite_url(tmp_path))
    with store._engine.connect() as conn:
        level = conn.exec_driver_sql("PRAGMA synchronous").scalar_one()
    store.close()
    assert level == 2  # FULL


@pytest.mark.postgresql
def test_a_resolve_committing_late_is_still_heard_on_postgresql(postgres_url: str) -> None:
    """Issue 14 review P4: history rows take their seq from a sequence at insert, so on
    PostgreSQL two writers could commit out of seq order, and ``resolved_by_people``, moving
    past the highest seq it saw, skipped a person's resolve still committing: never heard.
    Writers now take turns (``serialise_writers``): the engine's round waits for the
    resolve's commit, and the next look sees the resolve."""
    import threading
    import time

    from sqlalchemy import event

    url = new_database(postgres_url)
    store = AlertStore(url)
    try:
        x, _ = fire(store, "r1")
        fire(store, "r2")  # another alert, which the engine keeps repeating
        after = store.last_event_seq()

        @event.listens_for(store._engine, "commit")
        def slow_commit(conn: Any) -> None:  # the resolver's COMMIT takes 0.5 s
            if threading.current_thread().name == "resolver":
                time.sleep(0.5)

        resolver = threading.Thread(
            target=store.resolve, args=(x.id, "li.na", T0 + MIN), name="resolver"
        )
        resolver.start()
        time.sleep(0.2)  # its history row has its seq, not yet committed
        again = Transition(
            "river_over_warning", "r2", "update", T0 + 1, 2.5, "again", Reason.THRESHOLD
        )
        store.apply_many([StoreTransition(again, Severity.MAJOR, Kind.RIVER, {}, T0)])
        last, found = store.resolved_by_people(after)
        resolver.join()
        _, later = store.resolved_by_people(last)
        assert [(r, d) for r, d, *_ in found + later] == [("river_over_warning", "r1")]
    finally:
        store.close()
        drop_database(url)


@pytest.mark.postgresql
def test_a_writer_paused_in_its_transaction_does_not_stop_the_others(
    postgres_url: str, tmp_path: Path
) -> None:
    """Second review of issue 14 (P4's lock): a worker paused inside a write transaction
    (SIGSTOP, a partitioned network) held the writers' turn with no bound, so every other
    writer — lease beats too — waited for ever. Now the server ends a transaction idle past
    ``IDLE_TIMEOUT_S`` (2 s here), and leases take a turn of their own."""
    import os
    import signal
    import subprocess
    import sys
    from concurrent.futures import ThreadPoolExecutor

    from ingest.cluster.leases import Leases

    url = new_database(postgres_url)
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import os, signal, sys\n"
            "import ingest.transactions as d\n"
            "d.IDLE_TIMEOUT_S = 2\n"
            "from ingest.alerts.store import AlertStore\n"
            "s = AlertStore(sys.argv[1])\n"
            "with s._write() as conn:\n"
            "    print('in', flush=True)\n"
            "    os.kill(os.getpid(), signal.SIGSTOP)\n",
            url,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    store = AlertStore(url)
    leases = Leases(url, 4, 10_000)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "in"
        # In threads with a bound, so that waiting for ever fails the test instead of hanging it.
        pool = ThreadPoolExecutor(2)
        try:
            beat = pool.submit(leases.beat, "w2", T0)
            assert len(beat.result(timeout=1.5)) == 4  # its own turn: not behind the pause
            saved = pool.submit(store.save_state, "k", {"a": 1}, T0)
            saved.result(timeout=9)  # waits only until the server ends the pause
        finally:
            os.kill(child.pid, signal.SIGKILL)  # frees the turn if the server did not
            pool.shutdown()
        assert store.load_state("k") == {"a": 1}
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        store.close()
        leases.close()
        drop_database(url)


def test_a_large_store_round_may_work_longer_between_its_statements(postgres_url: str) -> None:
    """Issue 16 re-review (N5): the writers' idle-in-transaction limit (4 s) would kill a
    round of tens of thousands of changes while it composes their messages; such a
    transaction gets ``IDLE_PER_ITEM_S`` more per item, a small one keeps the limit."""
    from sqlalchemy import create_engine

    from ingest.transactions import IDLE_PER_ITEM_S, IDLE_TIMEOUT_S, allow_idle, serialise_writers

    url = new_database(postgres_url)
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            serialise_writers(conn)
            small = conn.exec_driver_sql("SHOW idle_in_transaction_session_timeout").scalar()
            allow_idle(conn, 60_000)
            large = conn.exec_driver_sql("SHOW idle_in_transaction_session_timeout").scalar()
        assert small == f"{IDLE_TIMEOUT_S}s"
        assert large == f"{round(IDLE_TIMEOUT_S + 60_000 * IDLE_PER_ITEM_S)}s"
    finally:
        engine.dispose()
        drop_database(url)
