"""A worker's rule state per partition (issue 16): saved with the partition's alert changes
under its lease, restored by the next owner, refused from a worker that lost the lease.

Unit tests on ``Alerting`` with a seat (ingest/cluster/seat.py), real ``Leases`` and a real
``AlertStore`` on one SQLite file; store rounds and beats are driven by hand. Only the MQTT
outbox is a fake. The same with real processes: tests/integration/test_workers.py.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from devices.kinds import Channel, Level
from devices.partitions import partition_of
from devices.payloads import RiverTelemetry
from devices.registry import Registry, load_registry
from ingest.alerts.alerting import Alerting
from ingest.alerts.store import AlertStore, sqlite_url
from ingest.cluster.engines import state_key
from ingest.cluster.leases import Leases
from ingest.cluster.seat import LEADER_PARTITION, Seat
from ingest.intake.batcher import Batcher
from ingest.intake.skew import ClockSkew
from rules.loader import parse_rules
from tests.unit.test_alerting_trust import MINUTE, RIVER, T0, WARNING
from tests.unit.test_pipeline import REPO, Outbox

P = 4
LEASE_MS = 10_000
FOR_2M: dict[str, Any] = {**WARNING, "for": "2m"}


@pytest.fixture(scope="module")
def registry() -> Registry:
    return load_registry(REPO / "config" / "registry.yaml")


class Worker:
    """One worker's Alerting, seat and batcher on the shared store and leases."""

    def __init__(
        self, tmp_path: Path, registry: Registry, name: str, rule: dict[str, Any] = FOR_2M
    ) -> None:
        self.registry = registry
        self.leases = Leases(sqlite_url(tmp_path), P, LEASE_MS)
        self.seat = Seat.of(name, P)
        self.batcher = Batcher(1000, 60)
        rules = parse_rules({"rules": [rule]}, "<test>", registry)
        store = AlertStore(sqlite_url(tmp_path))
        self.alerting = Alerting(
            rules,
            registry,
            store,
            Outbox(),  # type: ignore[arg-type]
            self.batcher,
            seat=self.seat,
        )
        self.store = store

    async def beat(self, now_ms: int) -> None:
        """What ingest/cluster/worker.py does with a beat, at ``now_ms``."""
        held = self.leases.beat(self.seat.worker, now_ms)
        for p in [p for p, e in self.seat.epochs.items() if held.get(p) != e]:
            self.seat.epochs.pop(p)
            self.alerting.drop_partition(p)
        self.seat.valid_until_ms = 2**62  # the test's own clock decides, through the leases
        for p, epoch in held.items():
            if p not in self.seat.epochs:
                await self.alerting.take_partition(p)
                self.seat.epochs[p] = epoch

    def reading(self, ts: int, level: float, seq: int) -> None:
        device = self.registry.devices[RIVER]
        msg = RiverTelemetry(ts=ts, seq=seq, water_level_m=level)
        transitions = self.alerting.observe(device, Channel.TELEMETRY, msg, ts, ts)
        self.alerting.take(transitions, (f"line {seq}", "river", None), RIVER)


async def test_the_next_owner_continues_a_for_window(tmp_path: Path, registry: Registry) -> None:
    """Worker a reads the river above warning for one minute and dies; b takes its partition
    after the lease and reads one more minute: the alert opens at two minutes, as if one
    worker had read it all (the window was saved under the partition's key, not reset)."""
    a = Worker(tmp_path, registry, "a")
    await a.beat(T0)
    assert set(a.seat.epochs) == set(range(P))
    for i in range(2):
        a.reading(T0 + i * MINUTE, 212.0, i + 1)
    await a.alerting._store_round()
    p = partition_of(RIVER, P)
    assert a.store.load_state(state_key(p)) is not None
    # a is gone (no more beats); b joins after a's lease ran out.
    b = Worker(tmp_path, registry, "b")
    await b.beat(T0 + LEASE_MS + 1)
    assert p in b.seat.epochs
    b.reading(T0 + 2 * MINUTE, 212.0, 3)
    await b.alerting._store_round()
    (alert,) = b.store.open_alerts()
    assert alert.device_id == RIVER and alert.opened_ms == T0 + 2 * MINUTE


async def test_a_worker_woken_after_its_lease_is_refused(
    tmp_path: Path, registry: Registry
) -> None:
    """Worker a judges readings, then (paused) loses its partitions to b before it stores
    them: its store round is refused, what it judged is dropped — no alert, no point given on
    (so no acknowledgement), the partition no longer judged — and b's state stands."""
    a = Worker(tmp_path, registry, "a")
    await a.beat(T0)
    for i in range(3):
        a.reading(T0 + i * MINUTE, 212.0, i + 1)  # would open the alert at two minutes
    b = Worker(tmp_path, registry, "b")
    await b.beat(T0 + LEASE_MS + 1)
    p = partition_of(RIVER, P)
    assert p in b.seat.epochs
    await a.alerting._store_round()  # refused: Fenced
    assert a.store.open_alerts() == []
    assert a.batcher.in_flight == 0 and a.alerting.pending_points == 0
    assert p not in a.seat.epochs and a.seat.lost.is_set()
    assert a.alerting.fenced == 3
    a.reading(T0 + 3 * MINUTE, 212.0, 4)  # read before the session is closed: not taken
    assert a.alerting.fenced == 4 and a.alerting.pending_points == 0


async def test_a_handed_back_partition_drops_its_unstored_work(
    tmp_path: Path, registry: Registry
) -> None:
    """a holds everything; b joins; a's next beat hands half back: what a judged of those
    partitions and not stored is dropped (b reads it again), the rest is stored."""
    a = Worker(tmp_path, registry, "a")
    await a.beat(T0)
    b = Worker(tmp_path, registry, "b")
    await b.beat(T0 + 1)  # a member now; nothing free yet
    a.reading(T0, 212.0, 1)
    await a.beat(T0 + 2)  # fair share 2: hands back the surplus
    mine = set(a.seat.epochs)
    assert len(mine) == 2
    expected_dropped = 0 if partition_of(RIVER, P) in mine else 1
    assert a.alerting.fenced == expected_dropped
    assert a.alerting.pending_points == 1 - expected_dropped


async def test_a_workers_live_stream_tells_what_another_worker_raised(
    tmp_path: Path, registry: Registry
) -> None:
    """The browser on worker b hears the alert worker a raised (and a person's acknowledgement
    made anywhere), from the shared store, in order."""
    a = Worker(tmp_path, registry, "a")
    await a.beat(T0)
    b = Worker(tmp_path, registry, "b")
    follow = asyncio.create_task(b.alerting.run_follow())
    try:
        async with b.alerting.feed.listen(lambda alert: True) as listener:
            for i in range(3):
                a.reading(T0 + i * MINUTE, 212.0, i + 1)
            await a.alerting._store_round()
            (alert,) = a.store.open_alerts()
            b.store.acknowledge(alert.id, "zhang.wei", T0 + 4 * MINUTE)
            got = [await asyncio.wait_for(listener.next(), 5) for _ in range(2)]
    finally:
        follow.cancel()
    assert [(c.alert.id, c.event.action.value) for c in got] == [
        (alert.id, "opened"),
        (alert.id, "acknowledged"),
    ]


async def test_only_the_leader_escalates_and_a_deposed_one_is_refused(
    tmp_path: Path, registry: Registry
) -> None:
    """The escalation clock runs once in the cluster: on the holder of partition 0. A worker
    that lost partition 0 (paused past its lease) and still tries is refused by the fence."""
    rule = {**FOR_2M, "escalate_after": "1m"}
    a = Worker(tmp_path, registry, "a", rule)
    await a.beat(T0)
    b = Worker(tmp_path, registry, "b", rule)
    await b.beat(T0 + 1)  # a member, holding nothing yet
    for i in range(3):
        a.reading(T0 + i * MINUTE, 212.0, i + 1)
    await a.alerting._store_round()
    (alert,) = a.store.open_alerts()
    later = alert.raised_ms + 2 * MINUTE
    assert a.alerting._leads() and not b.alerting._leads()
    # b takes everything once a's leases ran out; a has not heard (it was paused).
    await b.beat(T0 + LEASE_MS + 1)
    assert LEADER_PARTITION in b.seat.epochs
    assert a.alerting._escalate_due(later) == []  # refused: Fenced
    assert [x.escalation_level for x, _ in b.alerting._escalate_due(later)] == [Level.VILLAGE]


async def test_each_partition_saves_only_its_own_devices_clock_skews(
    tmp_path: Path, registry: Registry
) -> None:
    """The read clock is the worker's; skews and untimed stamps are the devices': each
    partition's saved state holds those of its own devices, for whichever worker takes it."""
    a = Worker(tmp_path, registry, "a")
    skew = ClockSkew()
    a.alerting.follow_clocks(skew)
    await a.beat(T0)
    for device_id in registry.devices:
        skew.saw(device_id, T0 + 1_000, T0)  # every device 1 s fast
    a.reading(T0, 212.0, 1)
    await a.alerting._store_round()
    for p in range(P):
        saved = a.store.load_state(state_key(p))
        assert saved is not None
        mine = {d for d in registry.devices if partition_of(d, P) == p}
        assert set(saved["caller"]["clock_skew"]) == mine
