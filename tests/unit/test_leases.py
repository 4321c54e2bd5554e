"""Partition leases (ingest/cluster/leases.py) on a real SQLite file and a real PostgreSQL 15
(the `url` fixture of test_alert_store): sharing, takeover when a worker dies, hand-back when
one joins, and the epoch that fences a worker woken too late."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ingest.cluster.leases import Leases, holds
from tests.unit.test_alert_store import url  # noqa: F401  (a fixture: SQLite and PostgreSQL)

P = 16
LEASE_MS = 6_000
T0 = 1_800_000_000_000


@pytest.fixture
def leases(url: str) -> Iterator[Leases]:  # noqa: F811
    found = Leases(url, P, LEASE_MS)
    yield found
    found.close()


def test_one_worker_takes_every_partition_then_shares_with_a_newcomer(leases: Leases) -> None:
    a = leases.beat("a", T0)
    assert sorted(a) == list(range(P)) and set(a.values()) == {1}
    assert leases.beat("b", T0 + 1000) == {}  # nothing free yet: a holds all, unexpired
    a = leases.beat("a", T0 + 2000)  # a sees b alive: keeps its fair half, hands back the rest
    assert len(a) == P // 2
    b = leases.beat("b", T0 + 3000)
    assert len(b) == P // 2 and set(a).isdisjoint(b)
    assert set(b.values()) == {2}  # taken over: a new epoch each
    assert leases.beat("a", T0 + 4000) == a  # renewed, unchanged


def test_a_dead_workers_partitions_are_taken_over_after_its_lease(leases: Leases) -> None:
    leases.beat("a", T0)
    leases.beat("b", T0 + 100)
    a = leases.beat("a", T0 + 200)
    b = leases.beat("b", T0 + 300)
    assert len(a) == len(b) == P // 2
    # a dies (no more beats). Before its lease runs out b takes nothing of it.
    assert leases.beat("b", T0 + 200 + LEASE_MS - 1) == b
    taken = leases.beat("b", T0 + 200 + LEASE_MS + 1)
    assert sorted(taken) == list(range(P))
    assert all(taken[p] == a[p] + 1 for p in a)  # each taken partition's epoch raised


def test_the_epoch_fences_a_worker_woken_past_its_lease(leases: Leases) -> None:
    a = leases.beat("a", T0)
    with leases._write() as conn:
        assert holds(conn, 3, "a", a[3])
    # a is stopped (SIGSTOP) past its lease; b takes everything over.
    b = leases.beat("b", T0 + LEASE_MS + 1)
    assert sorted(b) == list(range(P))
    with leases._write() as conn:
        assert not holds(conn, 3, "a", a[3])  # a's writes for partition 3 are refused
        assert holds(conn, 3, "b", b[3])
    # a wakes and beats: b is alive and holds its fair share of all 16; a gets none back
    # until b hands some back on its next beat.
    assert leases.beat("a", T0 + LEASE_MS + 2) == {}
    b = leases.beat("b", T0 + LEASE_MS + 3)
    assert len(b) == P // 2


def test_an_orderly_stop_hands_everything_back_at_once(leases: Leases) -> None:
    leases.beat("a", T0)
    leases.beat("b", T0 + 1)
    leases.beat("a", T0 + 2)
    leases.beat("b", T0 + 3)
    leases.release("a")
    b = leases.beat("b", T0 + 4)  # no wait for a's lease: taken at once
    assert sorted(b) == list(range(P))
    assert [lease.owner for lease in leases.all()] == ["b"] * P
