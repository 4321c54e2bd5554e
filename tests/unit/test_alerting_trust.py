"""Alerts a river chief can trust (issue 14): the engine and the alert store agree through a
person's resolve, a failing rule, a rule changed between two runs, an unreadable state, and
flapping.

Unit tests on ``ingest.alerts.alerting.Alerting`` with a real ``AlertStore`` (a SQLite file) and the
example city's registry; the store rounds are driven by hand (``_store_round``) so each step
is one deterministic round. Only the MQTT outbox is a fake (the store's own ``announcements``
table is what is asserted on). The real-service side of item 1 is in
tests/integration/test_resolve_redelivery.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from devices.kinds import Channel, Kind, Level
from devices.payloads import GateEvent, RiverTelemetry
from devices.registry import Registry, load_registry
from ingest.alerts.alerting import SNAPSHOT_KEY, Alerting
from ingest.alerts.store import AlertStore, StoreTransition, sqlite_url
from ingest.intake.batcher import Batcher
from ingest.intake.skew import ClockSkew
from rules.alerts import Alert, AlertState
from rules.loader import parse_rules
from rules.model import Severity
from rules.transition import Reason, Transition
from tests.unit.test_pipeline import REPO, Outbox

T0 = 1_719_800_000_000
MINUTE = 60_000
RIVER = "river-zj-0001"  # warning level 211.5 m in the example registry
GATE = "gate-sq-0001"

WARNING: dict[str, Any] = {
    "id": "river_over_warning",
    "name": "River above warning level",
    "name_zh": "水位超警戒",
    "type": "threshold",
    "severity": "major",
    "kinds": ["river"],
    "field": "water_level_m",
    "op": ">",
    "attribute": "warning_level_m",
}
RISING: dict[str, Any] = {
    "id": "river_rising",
    "name": "River rising",
    "name_zh": "水位上涨",
    "type": "threshold",
    "severity": "warning",
    "kinds": ["river"],
    "field": "water_level_m",
    "op": ">",
    "value": 200.0,
}
SILENT: dict[str, Any] = {
    "id": "device_silent",
    "name": "Device silent",
    "name_zh": "设备离线",
    "type": "silence",
    "severity": "warning",
    "kinds": ["gate", "river"],
    "k": 3,
}
TAILGATING: dict[str, Any] = {
    "id": "gate_tailgating_burst",
    "name": "Tailgating burst",
    "name_zh": "尾随频发",
    "type": "event_count",
    "severity": "warning",
    "kinds": ["gate"],
    "events": ["tailgating"],
    "count": 3,
    "window": "10m",
}


@pytest.fixture(scope="module")
def registry() -> Registry:
    return load_registry(REPO / "config" / "registry.yaml")


def alerting(tmp_path: Path, registry: Registry, *rules: dict[str, Any], **kw: Any) -> Alerting:
    """An Alerting over the store in ``tmp_path`` (a restart when one is there already)."""
    ruleset = parse_rules({"rules": list(rules)}, "<test>", registry)
    store = AlertStore(sqlite_url(tmp_path))
    return Alerting(ruleset, registry, store, Outbox(), Batcher(1000, 60), **kw)  # type: ignore[arg-type]


async def river(
    a: Alerting, registry: Registry, ts: int, level: float, seq: int | None = None
) -> None:
    """One reading, judged and stored (one store round), received on time."""
    msg = RiverTelemetry(ts=ts, seq=seq, water_level_m=level)
    a.take(a.observe(registry.devices[RIVER], Channel.TELEMETRY, msg, ts, ts))
    await a._store_round()


async def gate(
    a: Alerting, registry: Registry, ts: int, event: str, seq: int | None = None
) -> None:
    msg = GateEvent(ts=ts, seq=seq, event=event)
    a.take(a.observe(registry.devices[GATE], Channel.EVENT, msg, ts, ts))
    await a._store_round()


def unresolved(a: Alerting, rule_id: str) -> list[Alert]:
    return [x for x in a._store.open_alerts() if x.rule_id == rule_id]


def told(a: Alerting) -> list[dict[str, Any]]:
    """The MQTT messages waiting in the store's outbox, decoded."""
    return [json.loads(p) for _, _, p in a._store.pending_announcements(limit=100_000)]


# -- item 1: a person's resolve reaches the engine ------------------------------------------


async def test_a_resolve_made_elsewhere_reaches_the_engine(
    tmp_path: Path, registry: Registry
) -> None:
    """River at 212.0 m opens; a person resolves (the store, as the API and the CLI do); an
    hour more at 212.6 m opens a new alert at the next reading. On ec1dc14: none in the hour."""
    a = alerting(tmp_path, registry, WARNING)
    await river(a, registry, T0, 212.0)
    [first] = unresolved(a, "river_over_warning")
    a._store.resolve(first.id, "duty officer", T0 + MINUTE)  # another process, or the API
    await a._hear_resolves()
    for i in range(2, 62):
        await river(a, registry, T0 + i * MINUTE, 212.6)
    [second] = unresolved(a, "river_over_warning")
    assert second.id != first.id
    assert second.opened_ms == T0 + 2 * MINUTE  # the very next reading
    assert second.repeat_count == 0  # a level that stays up repeats nothing: no crossing


async def test_a_resolve_while_the_service_was_down_is_heard_at_start(
    tmp_path: Path, registry: Registry
) -> None:
    a = alerting(tmp_path, registry, WARNING)
    await river(a, registry, T0, 212.0)
    [first] = unresolved(a, "river_over_warning")
    a._store.resolve(first.id, "duty officer", T0 + MINUTE)  # the CLI, the service stopped
    b = alerting(tmp_path, registry, WARNING)
    assert not b.engine.is_open("river_over_warning", RIVER)
    await river(b, registry, T0 + 2 * MINUTE, 212.6)
    assert [x.opened_ms for x in unresolved(b, "river_over_warning")] == [T0 + 2 * MINUTE]


async def test_an_old_resolve_leaves_a_newer_episode_alone(
    tmp_path: Path, registry: Registry
) -> None:
    """The resolve is heard a little late: the condition cleared and opened again meanwhile."""
    a = alerting(tmp_path, registry, WARNING)
    await river(a, registry, T0, 212.0)
    [first] = unresolved(a, "river_over_warning")
    a._store.resolve(first.id, "duty officer", T0 + MINUTE)
    await river(a, registry, T0 + 2 * MINUTE, 210.0)  # clears (nothing to resolve in the store)
    await river(a, registry, T0 + 3 * MINUTE, 212.0)  # opens anew
    await a._hear_resolves()
    assert a.engine.is_open("river_over_warning", RIVER)
    await river(a, registry, T0 + 4 * MINUTE, 212.1)
    assert len(unresolved(a, "river_over_warning")) == 1


async def test_a_repeat_between_a_resolve_and_its_hearing_keeps_engine_and_store_agreed(
    tmp_path: Path, registry: Registry
) -> None:
    """Found in review: a repeat judged before the engine heard of a person's resolve opens
    a new alert in the store; the resolve, heard next, must not make the engine forget that
    one (it would never clear)."""
    held = {
        "id": "gate_held_open",
        "name": "Gate held open",
        "name_zh": "门禁常开",
        "type": "event",
        "severity": "warning",
        "kinds": ["gate"],
        "events": ["held_open"],
        "clear_after": "5m",
    }
    a = alerting(tmp_path, registry, held)
    await gate(a, registry, T0, "held_open")
    [first] = unresolved(a, "gate_held_open")
    a._store.resolve(first.id, "duty officer", T0 + MINUTE)
    await gate(a, registry, T0 + 2 * MINUTE, "held_open")  # a repeat, not yet heard of
    [second] = unresolved(a, "gate_held_open")
    await a._hear_resolves()
    assert a.engine.is_open("gate_held_open", GATE)
    a.take(a.engine.tick(T0 + 8 * MINUTE))  # 5 minutes without the event: it clears
    await a._store_round()
    assert unresolved(a, "gate_held_open") == []
    assert a._store.get(second.id).state is AlertState.RESOLVED  # type: ignore[union-attr]


FORCED: dict[str, Any] = {
    "id": "gate_forced_open",
    "name": "Gate forced open",
    "name_zh": "门禁被强行打开",
    "type": "event",
    "severity": "major",
    "kinds": ["gate"],
    "events": ["forced_open"],
}


async def test_a_backlog_sent_before_a_resolve_belongs_to_the_resolved_alert(
    tmp_path: Path, registry: Registry
) -> None:
    """Issue 14 review F7: a forced gate opens an alert; the service is killed while the gate
    reports the same forced opening again at T0+60 s (held by the broker); a person resolves
    the alert with the CLI at T0+120 s. At restart the backlog is read: the event sent before
    the resolve belongs to the episode the person closed. On af7b86c it opened a second alert
    (the engine took "resolved" to mean "up to the newest it had read", T0). An event sent
    after the resolve still opens one."""
    a = alerting(tmp_path, registry, FORCED)
    measured = ClockSkew()
    measured.saw(GATE, T0, T0)  # the gate's clock is right, as measured live
    a.follow_clocks(measured)
    await gate(a, registry, T0, "forced_open", seq=1)
    [first] = unresolved(a, "gate_forced_open")
    del a  # killed: the last round's state is stored, the measured skew with it
    AlertStore(sqlite_url(tmp_path)).resolve(first.id, "li.na", T0 + 2 * MINUTE, "closed it")
    b = alerting(tmp_path, registry, FORCED)
    msg = GateEvent(ts=T0 + MINUTE, seq=2, event="forced_open")  # the backlog, read late
    b.take(b.observe(registry.devices[GATE], Channel.EVENT, msg, T0 + MINUTE, T0 + 3 * MINUTE))
    await b._store_round()
    assert unresolved(b, "gate_forced_open") == []
    await gate(b, registry, T0 + 4 * MINUTE, "forced_open", seq=3)
    assert [x.opened_ms for x in unresolved(b, "gate_forced_open")] == [T0 + 4 * MINUTE]


async def test_a_resolve_is_placed_in_a_slow_clocks_own_time(
    tmp_path: Path, registry: Registry
) -> None:
    """A gate whose clock runs 4 minutes slow (measured): a person's resolve at wall time W
    is W − 4 min in the gate's time, so an event it stamps a minute after the resolve opens
    a new alert instead of being taken for the resolved one's (it would be for 4 minutes if
    W were compared with its stamps)."""
    slow = -4 * MINUTE
    a = alerting(tmp_path, registry, FORCED)
    measured = ClockSkew()
    measured.saw(GATE, T0 + slow, T0)
    a.follow_clocks(measured)

    async def forced(wall: int, seq: int) -> None:
        msg = GateEvent(ts=wall + slow, seq=seq, event="forced_open")
        a.take(a.observe(registry.devices[GATE], Channel.EVENT, msg, wall + slow, wall))
        await a._store_round()

    await forced(T0, 1)
    [first] = unresolved(a, "gate_forced_open")
    a._store.resolve(first.id, "li.na", T0 + MINUTE)
    await a._hear_resolves()
    await forced(T0 + 2 * MINUTE, 2)
    [second] = unresolved(a, "gate_forced_open")
    assert second.id != first.id and second.opened_ms == T0 + 2 * MINUTE + slow


async def test_a_clock_never_measured_keeps_its_events_after_a_resolve(
    tmp_path: Path, registry: Registry
) -> None:
    """Review of F7 (P1): a gate whose clock runs two days slow and was never measured is
    resolved while the service is down. Its resolve cannot be placed in the gate's time, so
    the engine falls back to what it had read: the gate's real forced openings after the
    resolve still open a new alert (placing it at wall time hid them for two days)."""
    slow = -2 * 24 * 60 * MINUTE
    a = alerting(tmp_path, registry, FORCED)

    async def forced(b: Alerting, wall: int, seq: int) -> None:
        msg = GateEvent(ts=wall + slow, seq=seq, event="forced_open")
        b.take(b.observe(registry.devices[GATE], Channel.EVENT, msg, wall + slow, wall))
        await b._store_round()

    await forced(a, T0, 1)
    [first] = unresolved(a, "gate_forced_open")
    del a
    AlertStore(sqlite_url(tmp_path)).resolve(first.id, "li.na", T0 + MINUTE)
    b = alerting(tmp_path, registry, FORCED)
    await forced(b, T0 + 60 * MINUTE, 2)
    [second] = unresolved(b, "gate_forced_open")
    assert second.id != first.id


async def test_a_resolve_stamped_by_a_clock_ahead_is_placed_no_later_than_heard(
    tmp_path: Path, registry: Registry
) -> None:
    """Review of F7 (P2): the CLI ran on a host whose clock is an hour ahead. Its resolve is
    heard now, so it is placed now, not an hour on: the gate's next forced opening, a minute
    later, opens a new alert."""
    import time

    now = time.time_ns() // 1_000_000
    a = alerting(tmp_path, registry, FORCED)
    measured = ClockSkew()
    measured.saw(GATE, now, now)
    a.follow_clocks(measured)
    await gate(a, registry, now - 2 * MINUTE, "forced_open", seq=1)
    [first] = unresolved(a, "gate_forced_open")
    a._store.resolve(first.id, "li.na", now + 60 * MINUTE)  # the CLI host's clock
    await a._hear_resolves()
    await gate(a, registry, now + MINUTE, "forced_open", seq=2)
    [second] = unresolved(a, "gate_forced_open")
    assert second.id != first.id


# -- item 4: one rule's exception costs only its own verdict --------------------------------


async def test_a_failing_rule_loses_only_its_own_verdict(
    tmp_path: Path, registry: Registry
) -> None:
    a = alerting(tmp_path, registry, RISING, WARNING, SILENT)

    def fail(*args: Any) -> Any:
        raise ZeroDivisionError("a rule's bug")

    # The engine calls each rule's observe bound once per route: break the first rule's.
    a.engine._observers = {
        route: tuple((*o[:5], fail if o[0] == 0 else o[5], *o[6:]) for o in obs)
        for route, obs in a.engine._observers.items()
    }
    await river(a, registry, T0, 212.0)
    assert [x.rule_id for x in a._store.open_alerts()] == ["river_over_warning"]
    assert a.engine.failures == {"river_rising": 1}
    # Time-driven work is isolated the same way: a silence rule that raises on a tick.
    silence = a.engine._evaluators[2]
    silence.expire = fail  # type: ignore[method-assign]
    assert a.engine.tick(T0 + 60 * MINUTE) == []
    assert a.engine.failures == {"river_rising": 1, "device_silent": 1}


# -- items 5 and 6: restore re-judged against the rules as they are now ---------------------


async def test_a_rule_narrowed_resolves_the_alerts_it_no_longer_watches(
    tmp_path: Path, registry: Registry
) -> None:
    a = alerting(tmp_path, registry, SILENT)
    await gate(a, registry, T0, "pass")
    await river(a, registry, T0, 210.0)
    a.take(a.engine.tick(T0 + 30 * MINUTE))
    await a._store_round()
    assert {x.device_id for x in unresolved(a, "device_silent")} == {GATE, RIVER}
    river_only = {**SILENT, "kinds": ["river"]}
    b = alerting(tmp_path, registry, river_only)
    [kept] = unresolved(b, "device_silent")
    assert kept.device_id == RIVER
    [gone] = b._store.list(device_id=GATE, rule_id="device_silent")
    assert (gone.state, gone.resolved_by) == (AlertState.RESOLVED, "auto")
    assert (gone.note or "").startswith("rule_changed")
    assert any(m["alert"]["id"] == gone.id and m["event"]["action"] == "resolved" for m in told(b))


async def test_a_rule_removed_resolves_its_alerts(tmp_path: Path, registry: Registry) -> None:
    a = alerting(tmp_path, registry, WARNING, RISING)
    await river(a, registry, T0, 212.0)
    b = alerting(tmp_path, registry, WARNING)
    assert [x.rule_id for x in b._store.open_alerts()] == ["river_over_warning"]


async def test_a_count_raised_while_open_clears(tmp_path: Path, registry: Registry) -> None:
    a = alerting(tmp_path, registry, TAILGATING)
    for i in range(3):
        await gate(a, registry, T0 + i * 1000, "tailgating")
    assert len(unresolved(a, "gate_tailgating_burst")) == 1
    b = alerting(tmp_path, registry, {**TAILGATING, "count": 5})
    b.take(b.engine.tick(T0 + 5000))
    await b._store_round()
    assert unresolved(b, "gate_tailgating_burst") == []


FLAPPY = {**WARNING, "flap": {"max_transitions": 2, "window": "1h"}}


async def flap(a: Alerting, registry: Registry, cycles: int, start: int = T0) -> int:
    """Up and down every 9 minutes (a congestion-like flapping); returns the next time."""
    t = start
    for _ in range(cycles):
        await river(a, registry, t, 212.0)
        await river(a, registry, t + 9 * MINUTE, 210.0)
        t += 18 * MINUTE
    return t


async def test_flap_suppression_removed_while_held_closes(
    tmp_path: Path, registry: Registry
) -> None:
    a = alerting(tmp_path, registry, FLAPPY)
    t = await flap(a, registry, 3)
    [held] = unresolved(a, "river_over_warning")
    assert held.flapping
    b = alerting(tmp_path, registry, WARNING)
    b.take(b.engine.tick(t))
    await b._store_round()
    assert unresolved(b, "river_over_warning") == []


async def test_flapping_is_told_once_then_on_the_renotify_schedule(
    tmp_path: Path, registry: Registry
) -> None:
    """Issue 14 item 8: flapping every 9 minutes for 3 hours; renotify 10 min in the store's
    clock — here every message is written in the same wall-clock instant, so a repeat is told
    at most once. On ec1dc14 each held-back clear went out (one message per cycle)."""
    a = alerting(tmp_path, registry, FLAPPY, renotify_s=600)
    await flap(a, registry, 10)
    actions = [m["event"]["action"] for m in told(a)]
    # One normal open and clear, the second open, then held: told once, and the rises and
    # held-back clears of the next 8 cycles are repeats within the renotify interval.
    assert actions == ["opened", "resolved", "opened", "flapping"]


async def test_a_failed_store_round_tells_its_flapping_again(
    tmp_path: Path, registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 14 review F5: the round that holds the condition open as flapping fails (disk
    full, the file locked past its timeout) and is retried. Its "told once" was kept in memory
    although the transaction rolled back, so the retry told nothing: the flapping message was
    never sent. Now the memory changes only once the round has committed."""
    import ingest.alerts.alerting as alerting_module
    import ingest.alerts.store as store_module

    monkeypatch.setattr(alerting_module, "STORE_RETRY_S", 0.0)
    real_put = store_module.put_announcements
    failed: list[int] = []

    def put_failing_once(conn: Any, rows: list[tuple[str, bytes]]) -> None:
        if not failed and any(b'"action": "flapping"' in p for _, p in rows):
            failed.append(len(rows))
            raise RuntimeError("disk I/O error")  # the whole round rolls back
        real_put(conn, rows)

    monkeypatch.setattr(store_module, "put_announcements", put_failing_once)
    a = alerting(tmp_path, registry, FLAPPY, renotify_s=600)
    t = T0
    for _ in range(4):
        for ts, level in ((t, 212.0), (t + 9 * MINUTE, 210.0)):
            await river(a, registry, ts, level)
            while a._to_store:
                await a._store_round()  # run_store's retry of the same batch
        t += 18 * MINUTE
    assert failed, "the flapping round never failed: the test proves nothing"
    assert [m["event"]["action"] for m in told(a)] == ["opened", "resolved", "opened", "flapping"]
    [alert] = unresolved(a, "river_over_warning")
    assert alert.flapping


async def test_a_batch_redone_after_a_refused_insert_is_stored_and_told_together(
    tmp_path: Path, registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 14 review P5: after an IntegrityError (another writer raced an insert), the
    batch was redone one item per transaction and its messages queued in yet another; if
    that last step failed (or the process died just before it), the retried round found the
    clear done and told nobody. Now the redo is one transaction with its messages: a failure
    rolls all of it back, and the retry tells. Both failures are simulated (SQLite)."""
    from sqlalchemy.exc import IntegrityError

    import ingest.alerts.alerting as alerting_module
    import ingest.alerts.store as store_module

    monkeypatch.setattr(alerting_module, "STORE_RETRY_S", 0.0)
    a = alerting(tmp_path, registry, WARNING)
    await river(a, registry, T0, 212.0)  # opens, told
    real_apply, real_put = store_module.WriteTransaction.apply_item, store_module.put_announcements
    armed = {"integrity": True, "put": True}

    def apply_item(self: Any, item: Any) -> Any:
        if armed["integrity"]:
            armed["integrity"] = False
            raise IntegrityError("INSERT", {}, Exception("another writer"))
        return real_apply(self, item)

    def put(conn: Any, rows: Any) -> None:
        if armed["put"] and rows:
            armed["put"] = False
            raise RuntimeError("database is locked")
        real_put(conn, rows)

    monkeypatch.setattr(store_module.WriteTransaction, "apply_item", apply_item)
    monkeypatch.setattr(store_module, "put_announcements", put)
    await river(a, registry, T0 + MINUTE, 210.0)  # clears: the redo, which then fails
    while a._to_store:
        await a._store_round()  # run_store's retry
    assert not armed["integrity"] and not armed["put"]
    assert unresolved(a, "river_over_warning") == []
    assert [m["event"]["action"] for m in told(a)] == ["opened", "resolved"]


# -- item 7: an unreadable state never stops ingest ------------------------------------------


@pytest.mark.parametrize(
    "state",
    [
        {"format": "from the future"},
        {"format": 1, "devices": "nonsense", "rules": {}},
    ],
)
async def test_an_unreadable_state_starts_afresh_and_adopts_open_alerts(
    tmp_path: Path, registry: Registry, state: dict[str, Any]
) -> None:
    a = alerting(tmp_path, registry, WARNING)
    await river(a, registry, T0, 212.0)
    a._store.save_state(SNAPSHOT_KEY, state)
    b = alerting(tmp_path, registry, WARNING)
    assert b.state_problem is not None and "started afresh" in b.state_problem
    assert b.engine.is_open("river_over_warning", RIVER)  # adopted from the store
    await river(b, registry, T0 + MINUTE, 210.0)  # the next reading decides: it clears
    assert unresolved(b, "river_over_warning") == []


async def test_a_newer_versions_state_is_read_for_what_is_known(
    tmp_path: Path, registry: Registry
) -> None:
    a = alerting(tmp_path, registry, WARNING)
    await river(a, registry, T0, 212.0, seq=1)
    snap = a.engine.snapshot()
    snap["format"] = 7
    snap["rules"]["river_over_warning"]["states"][RIVER]["something_new"] = {"x": 1}
    a._store.save_state(SNAPSHOT_KEY, snap)
    b = alerting(tmp_path, registry, WARNING)
    assert b.state_problem is not None and "format 7" in b.state_problem
    assert b.engine.snapshot()["rules"] == a.engine.snapshot()["rules"]
    await river(b, registry, T0, 212.0, seq=1)  # a redelivery: still recognised
    assert b.changes == 0


# -- also reported: escalation looked at the newest 10,000 open alerts only -----------------


async def test_the_oldest_of_more_than_10000_open_alerts_still_escalates(
    tmp_path: Path, registry: Registry
) -> None:
    a = alerting(tmp_path, registry, {**WARNING, "escalate_after": "10m"})
    areas = {Level.GRID: "g", Level.VILLAGE: "v", Level.TOWNSHIP: "t", Level.COUNTY: "c"}
    now = T0 + 60 * MINUTE

    def item(i: int, raised: int) -> StoreTransition:
        t = Transition(
            "river_over_warning", f"d{i:05}", "open", raised, 212.0, "", Reason.THRESHOLD
        )
        return StoreTransition(t, Severity.MAJOR, Kind.RIVER, areas, raised)

    # One alert waiting since T0, then 10,000 newer ones not yet due.
    a._store.apply_many([item(0, T0)] + [item(i, now - i) for i in range(1, 10_001)])
    escalated = a._escalate_due(now)
    assert [(x.device_id, x.escalation_level) for x, _ in escalated] == [("d00000", Level.VILLAGE)]


async def test_alerts_resolved_elsewhere_leave_the_told_memory(
    tmp_path: Path, registry: Registry
) -> None:
    """Issue 14 review P8: an alert resolved by the CLI or another process stayed in the told
    memory for good (one entry per alert ever raised). Hearing the resolve drops it."""
    a = alerting(tmp_path, registry, WARNING)
    await river(a, registry, T0, 212.0)
    [first] = unresolved(a, "river_over_warning")
    assert first.id in a._told.last_ms
    a._store.resolve(first.id, "duty officer", T0 + MINUTE)
    await a._hear_resolves()
    assert first.id not in a._told.last_ms


async def test_an_event_sent_before_a_resolve_and_read_before_it_is_heard_opens_nothing(
    tmp_path: Path, registry: Registry
) -> None:
    """Issue 14 review P3: an event the gate sent before a person's resolve, read in the
    second before the engine hears of the resolve (a backlog being read), opened a new alert
    (the engine still held the condition, the store found it resolved). The store now sees
    that the update was sent before the resolve and drops it; one sent after opens anew."""
    a = alerting(tmp_path, registry, FORCED)
    measured = ClockSkew()
    measured.saw(GATE, T0, T0)
    a.follow_clocks(measured)

    async def forced(sent: int, arrived: int, seq: int) -> None:
        msg = GateEvent(ts=sent, seq=seq, event="forced_open")
        a.take(a.observe(registry.devices[GATE], Channel.EVENT, msg, sent, arrived, 0))
        await a._store_round()

    await forced(T0, T0, 1)
    [first] = unresolved(a, "gate_forced_open")
    a._store.resolve(first.id, "li.na", T0 + 2 * MINUTE)
    await forced(T0 + MINUTE, T0 + 2 * MINUTE + 300, 2)  # sent before, read before hearing
    assert unresolved(a, "gate_forced_open") == []
    await a._hear_resolves()
    await forced(T0 + 3 * MINUTE, T0 + 3 * MINUTE, 3)  # sent after the resolve
    [second] = unresolved(a, "gate_forced_open")
    assert second.id != first.id
    # The first and the new one; the resolve was the store's alone (no message here).
    assert [m["event"]["action"] for m in told(a)] == ["opened", "opened"]
