"""The review of issue 16, its proven findings as tests (each failed before its fix):
F1 a failed store round put a dropped partition's work back, stored later without a fence;
F2 two processes given one worker name shared every epoch;
F4 a person's resolve heard while a partition was being taken was lost to its engine;
F5 an old round's refusal dropped partitions just taken again at new epochs.
F3 a device could take over (and wipe) a partition's session by its guessable client id.

Unit tests on ``Alerting`` with seats, real ``Leases`` and a real ``AlertStore`` (SQLite);
the thread a store round runs in is held at the worst moment with events.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from devices.kinds import Channel
from devices.partitions import partition_of
from devices.payloads import RiverTelemetry
from devices.registry import Registry
from ingest.alerts import alerting as alerting_mod
from ingest.mqtt.partitions import session_id
from ingest.settings import Settings
from tests.unit.test_alerting_trust import MINUTE, RIVER, SILENT, T0
from tests.unit.test_partition_engines import LEASE_MS, P, Worker, registry  # noqa: F401


def hold_the_round(
    a: Worker, monkeypatch: pytest.MonkeyPatch, fail: bool
) -> tuple[threading.Event, threading.Event]:
    """The next store round's thread waits in ``_apply_all`` until released (then fails
    with an ordinary error, or goes on)."""
    inside, go_on = threading.Event(), threading.Event()
    real = a.alerting._apply_all

    def held(*args: Any, **kwargs: Any) -> Any:
        inside.set()
        go_on.wait(5)
        if fail:
            raise RuntimeError("canceling statement due to lock timeout")
        return real(*args, **kwargs)

    monkeypatch.setattr(a.alerting, "_apply_all", held)
    return inside, go_on


def lose_everything(a: Worker) -> None:
    """What the beat does when the leases ran out (``Worker._drop``)."""
    for q in list(a.seat.epochs):
        a.seat.epochs.pop(q)
        a.alerting.drop_partition(q)


async def test_f1_a_failed_round_does_not_bring_back_a_dropped_partition(
    tmp_path: Path,
    registry: Registry,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(alerting_mod, "STORE_RETRY_S", 0)
    a = Worker(tmp_path, registry, "a")
    await a.beat(T0)
    for i in range(3):
        a.reading(T0 + i * MINUTE, 212.0, i + 1)  # opens the alert at two minutes
    inside, go_on = hold_the_round(a, monkeypatch, fail=True)
    round_ = asyncio.create_task(a.alerting._store_round())
    await asyncio.to_thread(inside.wait, 5)
    lose_everything(a)
    go_on.set()
    await round_
    b = Worker(tmp_path, registry, "b")
    await b.beat(T0 + LEASE_MS + 1)
    assert partition_of(RIVER, P) in b.seat.epochs
    assert a.alerting.pending_points == 0  # dropped: its messages come again to b
    monkeypatch.undo()
    await a.alerting._store_round()
    assert a.store.open_alerts() == [] and a.batcher.in_flight == 0


async def test_f2_two_processes_with_one_name_do_not_share_an_epoch(
    tmp_path: Path,
    registry: Registry,  # noqa: F811
) -> None:
    p = partition_of(RIVER, P)
    old = Worker(tmp_path, registry, "worker-1")
    await old.beat(T0)
    old.reading(T0, 212.0, 1)  # judged; then the process is paused before storing it
    new = Worker(tmp_path, registry, "worker-1")  # a second process, the same name
    await new.beat(T0 + 1_000)
    assert new.seat.epochs == {}  # the leases are the other process's, name or not
    await new.beat(T0 + LEASE_MS + 1)  # the old one's leases ran out: taken, new epochs
    assert p in new.seat.epochs
    for i in range(3):
        new.reading(T0 + i * MINUTE, 212.0, i + 1)
    await new.alerting._store_round()
    (alert,) = new.store.open_alerts()
    await old.alerting._store_round()  # the old process wakes up: refused
    assert old.alerting.fenced == 1 and p not in old.seat.epochs
    assert new.store.open_alerts() == [alert]


async def test_f4_a_resolve_heard_while_the_partition_is_being_taken_reaches_it(
    tmp_path: Path,
    registry: Registry,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    p = partition_of(RIVER, P)
    a = Worker(tmp_path, registry, "a")
    await a.beat(T0)
    for i in range(3):
        a.reading(T0 + i * MINUTE, 212.0, i + 1)
    await a.alerting._store_round()
    (alert,) = a.store.open_alerts()
    epoch = a.seat.epochs.pop(p)  # lost and taken again (a database hiccup)
    a.alerting.drop_partition(p)
    real = a.store.open_alerts
    inside, go_on = threading.Event(), threading.Event()

    def slow_open_alerts() -> Any:
        rows = real()
        inside.set()
        go_on.wait(5)  # the rest of the reconcile, on a slow database
        return rows

    monkeypatch.setattr(a.store, "open_alerts", slow_open_alerts)
    take = asyncio.create_task(a.alerting.take_partition(p))
    await asyncio.to_thread(inside.wait, 5)
    a.store.resolve(alert.id, "zhang.wei", T0 + 3 * MINUTE)  # a person, through the API
    await a.alerting._hear_resolves()  # the clock's look, while no engine judges p
    go_on.set()
    await take
    a.seat.epochs[p] = epoch  # as the beat does once the partition is taken
    monkeypatch.undo()
    assert not a.alerting.engine.is_open(alert.rule_id, RIVER)
    for i in range(4, 7):  # still above warning: a new alert after `for: 2m`
        a.reading(T0 + i * MINUTE, 212.0, i + 10)
    await a.alerting._store_round()
    (again,) = a.store.open_alerts()
    assert again.id != alert.id and again.opened_ms == T0 + 6 * MINUTE


async def test_f5_an_old_rounds_refusal_leaves_partitions_taken_again(
    tmp_path: Path,
    registry: Registry,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    a = Worker(tmp_path, registry, "a")
    await a.beat(T0)
    a.reading(T0, 212.0, 1)
    inside, go_on = hold_the_round(a, monkeypatch, fail=False)
    old_round = asyncio.create_task(a.alerting._store_round())
    await asyncio.to_thread(inside.wait, 5)
    lose_everything(a)
    await a.beat(T0 + LEASE_MS + 1)  # taken again, epochs raised
    new_epochs = dict(a.seat.epochs)
    a.reading(T0 + MINUTE, 212.0, 2)  # judged by the new engine
    go_on.set()
    await old_round  # refused: the old epochs
    assert a.seat.epochs == new_epochs
    assert a.alerting.pending_points == 1  # the new engine's message waits to be stored
    monkeypatch.undo()
    await a.alerting._store_round()
    assert a.batcher.in_flight == 1


def test_f3_a_partitions_session_id_cannot_be_guessed_without_the_device_secret() -> None:
    """F3: NATS lets any authenticated user take over a session by client id (a clean one
    wipes it). The partition sessions' ids carry a key only the device secret gives: stable
    across workers and across a rotation of the ingest password (a new id would strand what
    the old session holds), different for another secret, not the secret itself."""
    one = Settings(mqtt_client_id="citysense-ingest-1", dev_secret=SecretStr("s3cret-A"))
    other = one.model_copy(update={"dev_secret": SecretStr("s3cret-B")})
    rotated = one.model_copy(update={"mqtt_password": SecretStr("a new ingest password")})
    assert session_id(one, 3) == session_id(rotated, 3)
    assert session_id(one, 3) == session_id(one.model_copy(), 3)  # every worker: the same
    assert session_id(one, 3) != session_id(other, 3)
    assert session_id(one, 3) != "citysense-ingest-1-p3" and "s3cret" not in session_id(one, 3)
    assert session_id(one, 3).startswith("citysense-ingest-1-") and session_id(one, 3).endswith(
        "-p3"
    )


# -- the re-review of the fixes ---------------------------------------------------------------


async def test_n1_nothing_is_judged_for_a_partition_before_its_epoch_is_known(
    tmp_path: Path,
    registry: Registry,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """N1: F4's catch-up ran after the engine was installed, so readings and ticks judged in
    that window were refused by the fence (no epoch yet) while the engine kept their state:
    an alert lost for as long as its condition lasted. Now the engine is installed after the
    catch-up, with no ``await`` before the epoch is recorded."""
    p = partition_of(RIVER, P)
    a = Worker(tmp_path, registry, "a")
    await a.beat(T0)
    epoch = a.seat.epochs.pop(p)
    a.alerting.drop_partition(p)
    real = a.store.resolved_by_people
    inside, go_on = threading.Event(), threading.Event()

    def slow(after: int, *args: Any, **kwargs: Any) -> Any:
        inside.set()
        go_on.wait(5)
        return real(after, *args, **kwargs)

    monkeypatch.setattr(a.store, "resolved_by_people", slow)
    take = asyncio.create_task(a.alerting.take_partition(p))
    await asyncio.to_thread(inside.wait, 5)  # catching up: not judged yet
    a.reading(T0, 212.0, 1)
    assert a.alerting.pending_points == 0 and a.alerting.fenced == 1  # not taken: comes again
    go_on.set()
    await take
    a.seat.epochs[p] = epoch  # as the beat does, with no await after the take
    monkeypatch.undo()
    for i in range(3):
        a.reading(T0 + i * MINUTE, 212.0, i + 1)  # the broker sends the first one again
    await a.alerting._store_round()
    (alert,) = a.store.open_alerts()
    assert alert.opened_ms == T0 + 2 * MINUTE


async def test_n2_a_ticks_transitions_of_a_held_partition_survive_a_dropped_one(
    tmp_path: Path,
    registry: Registry,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """N2: a tick's item spans partitions; a failed round put back none of it when one of its
    partitions was dropped meanwhile, losing a held partition's silence alert."""
    monkeypatch.setattr(alerting_mod, "STORE_RETRY_S", 0)
    r0, r1 = "river-zj-0001", "river-zj-0002"
    p0, p1 = partition_of(r0, P), partition_of(r1, P)
    assert p0 != p1
    a = Worker(tmp_path, registry, "a", SILENT)
    await a.beat(T0)
    for device_id in (r0, r1):
        device = registry.devices[device_id]
        for i in range(4):
            ts = T0 + i * MINUTE
            msg = RiverTelemetry(ts=ts, seq=i + 1, water_level_m=100.0)
            observed = a.alerting.observe(device, Channel.TELEMETRY, msg, ts, ts)
            a.alerting.take(observed, None, device_id)
    await a.alerting._store_round()
    due = a.alerting.engine.tick(T0 + 60 * MINUTE)
    assert {t.device_id for t in due} >= {r0, r1}
    a.alerting.take(due)  # one item, both partitions
    inside, go_on = hold_the_round(a, monkeypatch, fail=True)
    round_ = asyncio.create_task(a.alerting._store_round())
    await asyncio.to_thread(inside.wait, 5)
    a.seat.epochs.pop(p0)
    a.alerting.drop_partition(p0)
    go_on.set()
    await round_
    monkeypatch.undo()
    await a.alerting._store_round()
    assert r1 in [x.device_id for x in a.store.open_alerts()]
    assert r0 not in [x.device_id for x in a.store.open_alerts()]
