"""Who owns which partition and how far each has read: ``citysense cluster status`` and
``GET /cluster`` (issue 16), computed from the leases and members as stored."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from pydantic import BaseModel

from ingest.cluster.leases import Lease, Leases


class PartitionStatus(BaseModel):
    """One partition's lease as seen at ``now_ms``."""

    partition: int
    owner: str | None  # None when nobody holds it now: never taken, expired or handed back
    epoch: int  # 0: never leased
    expires_ms: int
    held: bool  # expires_ms > now
    read: int  # messages its last owner read since it took the lease
    read_ms: int  # wall ms of the last of them; 0: none yet


class WorkerStatus(BaseModel):
    """One worker: when it last beat, and what it holds now."""

    worker: str
    seen_ms: int  # its last beat; 0 if it holds a lease but is no member (it stopped beating)
    alive: bool  # beat within the lease period: counted in the fair share
    partitions: list[int]
    read: int  # messages read, summed over the partitions it holds
    read_ms: int  # the newest message read among them; 0: none yet


class ClusterStatus(BaseModel):
    """The whole cluster at ``now_ms``."""

    broker: Literal["nats"] = "nats"  # a mosquitto service has no cluster (no partitions)
    now_ms: int
    partition_count: int
    lease_s: float
    workers: list[WorkerStatus]
    partitions: list[PartitionStatus]
    unowned: list[int]  # partitions nobody holds now


def partition_status(partition: int, lease: Lease | None, now_ms: int) -> PartitionStatus:
    """A partition's status from its stored lease (None: never leased)."""
    if lease is None:
        return PartitionStatus(
            partition=partition, owner=None, epoch=0, expires_ms=0, held=False, read=0, read_ms=0
        )
    held = lease.expires_ms > now_ms  # the same test as Leases.beat's: expired at expires_ms
    return PartitionStatus(
        partition=partition,
        owner=lease.owner if held else None,
        epoch=lease.epoch,
        expires_ms=lease.expires_ms,
        held=held,
        read=lease.read,
        read_ms=lease.read_ms,
    )


def worker_status(
    worker: str, seen_ms: int, held: list[PartitionStatus], lease_ms: int, now_ms: int
) -> WorkerStatus:
    """A worker's status from its last beat and the partitions it holds."""
    return WorkerStatus(
        worker=worker,
        seen_ms=seen_ms,
        alive=seen_ms > now_ms - lease_ms,  # Leases.beat's test of a live member
        partitions=sorted(p.partition for p in held),
        read=sum(p.read for p in held),
        read_ms=max((p.read_ms for p in held), default=0),
    )


def cluster_status(
    leases: list[Lease], members: dict[str, int], partitions: int, lease_ms: int, now_ms: int
) -> ClusterStatus:
    """The cluster as ``leases`` and ``members`` (``Leases.all``, ``Leases.members``) show it."""
    stored = {lease.partition: lease for lease in leases}
    rows = [partition_status(p, stored.get(p), now_ms) for p in range(partitions)]
    held: dict[str, list[PartitionStatus]] = {}
    for row in rows:
        if row.owner is not None:
            held.setdefault(row.owner, []).append(row)
    # A holder missing from the members is still shown: it holds partitions until they expire.
    names = sorted(set(members) | set(held))
    return ClusterStatus(
        now_ms=now_ms,
        partition_count=partitions,
        lease_s=lease_ms / 1000,
        workers=[
            worker_status(w, members.get(w, 0), held.get(w, []), lease_ms, now_ms) for w in names
        ],
        partitions=rows,
        unowned=[row.partition for row in rows if row.owner is None],
    )


def read_cluster_status(store: Leases, now_ms: int) -> ClusterStatus:
    """The cluster as stored in ``store``'s database now (blocking: two reads)."""
    return cluster_status(store.all(), store.members(), store.partitions, store.lease_ms, now_ms)


def partition_ranges(partitions: Iterable[int]) -> str:
    """Partitions as ranges, e.g. ``0-7,9,12-13``; ``-`` for none."""
    spans: list[list[int]] = []
    for p in sorted(set(partitions)):
        if spans and p == spans[-1][1] + 1:
            spans[-1][1] = p
        else:
            spans.append([p, p])
    return ",".join(f"{a}-{b}" if b > a else f"{a}" for a, b in spans) or "-"
