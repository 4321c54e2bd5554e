"""Which worker owns which partition: leases with epochs in the shared database (issue 16).

Every worker (a ``citysense serve`` with its ``CITYSENSE_WORKER_NAME``) calls ``beat`` a few
times per lease period. One write transaction (``BEGIN IMMEDIATE`` on SQLite, row locks on
PostgreSQL) sees every lease and every live worker and decides:

- a lease the worker holds is renewed (``expires_ms`` = now + the lease period);
- a worker holding more than its fair share (⌈P / live workers⌉) hands the surplus back, so a
  worker that joins gets partitions within one beat of the others;
- a worker holding fewer takes free or expired partitions, each with its epoch raised by one.

The epoch is the fence: every write a worker makes for a partition carries the epoch it
holds, and ``holds`` (called inside that write's transaction) refuses it once another
worker has taken the partition — so a worker paused past its lease (SIGSTOP, a long GC, a
partitioned network) and woken up cannot overwrite its successor's work. Time is each
worker's wall clock: hosts must keep their clocks within a small part of the lease period
(NTP), as every lease scheme without a shared clock requires.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Integer,
    MetaData,
    String,
    Table,
    select,
)
from sqlalchemy.engine import Connection, Engine

from ingest.transactions import WRITE, open_engine, serialise_writers

metadata = MetaData()
# The leases' own turn on PostgreSQL: a lease beat never waits behind the alert writers.
LEASES_LOCK = 0x4C_45_41_53  # "LEAS"
FORGET_AFTER_LEASES = 10

partition_leases = Table(
    "partition_leases",
    metadata,
    Column("partition", Integer, primary_key=True),
    Column("owner", String(64), nullable=False),
    Column("epoch", BigInteger, nullable=False),
    Column("expires_ms", BigInteger, nullable=False),
    # How far the owner has read the partition (``cluster status``): messages since it took
    # the lease, and the wall time of the last one; reported with each beat.
    Column("read", BigInteger, nullable=False, default=0),
    Column("read_ms", BigInteger, nullable=False, default=0),
)

cluster_members = Table(
    "cluster_members",
    metadata,
    Column("worker", String(64), primary_key=True),
    Column("seen_ms", BigInteger, nullable=False),
)


@dataclass(frozen=True)
class Lease:
    """A partition's lease as stored."""

    partition: int
    owner: str
    epoch: int
    expires_ms: int
    read: int = 0
    read_ms: int = 0


# A partition's progress as its owner reports it: (messages read since it took it, ms of the last)
Progress = dict[int, tuple[int, int]]


class Leases:
    """The leases of ``partitions`` partitions in the database at ``url``."""

    def __init__(self, url: str, partitions: int, lease_ms: int) -> None:
        self.partitions = partitions
        self.lease_ms = lease_ms
        self._engine: Engine = open_engine(url)
        self._writer = self._engine.execution_options(**{WRITE: True})
        with self._writer.begin() as conn:
            serialise_writers(conn, LEASES_LOCK)
            metadata.create_all(conn)

    def close(self) -> None:
        self._engine.dispose()

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with self._writer.begin() as conn:
            # No two workers insert one new lease at once. A beat waits at most a third of the
            # lease: one that waited longer would renew leases already run out on its way back.
            serialise_writers(conn, LEASES_LOCK, self.lease_ms / 3000)
            yield conn

    def beat(
        self, worker: str, now_ms: int, progress: Progress | None = None, take: bool = True
    ) -> dict[int, int]:
        """Renew, hand back and take leases for ``worker``; the partitions it holds now, each
        with its epoch. ``progress``: how far it has read each partition it holds. Without
        ``take``, only its membership and what it holds are renewed (a worker's first beat:
        workers started together then split the partitions evenly from their second)."""
        with self._write() as conn:
            _seen(conn, worker, now_ms)
            # A worker that died (each start is a member of its own) is shown as gone by
            # ``cluster status`` for ten lease periods, then forgotten.
            conn.execute(
                cluster_members.delete().where(
                    cluster_members.c.seen_ms < now_ms - FORGET_AFTER_LEASES * self.lease_ms
                )
            )
            live = conn.execute(
                select(cluster_members.c.worker).where(
                    cluster_members.c.seen_ms > now_ms - self.lease_ms
                )
            ).scalars()
            fair = math.ceil(self.partitions / max(1, len(list(live))))
            leases = {
                row.partition: Lease(
                    row.partition, row.owner, row.epoch, row.expires_ms, row.read, row.read_ms
                )
                for row in conn.execute(select(partition_leases).with_for_update())
            }
            mine = sorted(
                p
                for p, lease in leases.items()
                if lease.owner == worker and lease.expires_ms > now_ms
            )
            for p in mine[fair:]:  # the surplus, handed back for a newcomer to take
                self._put(conn, Lease(p, worker, leases[p].epoch, 0))
            mine = mine[:fair]
            for p in mine:
                read, read_ms = (progress or {}).get(p, (leases[p].read, leases[p].read_ms))
                lease = Lease(p, worker, leases[p].epoch, now_ms + self.lease_ms, read, read_ms)
                self._put(conn, lease)
            free = [
                p
                for p in range(self.partitions)
                if p not in leases or leases[p].expires_ms <= now_ms
            ]
            for p in free[: max(0, fair - len(mine))] if take else ():
                epoch = leases[p].epoch + 1 if p in leases else 1
                self._put(
                    conn, Lease(p, worker, epoch, now_ms + self.lease_ms), new=p not in leases
                )
                mine.append(p)
            # What it holds now, with the epochs just written (taken partitions got new ones).
            rows = conn.execute(
                select(partition_leases.c.partition, partition_leases.c.epoch).where(
                    partition_leases.c.owner == worker,
                    partition_leases.c.expires_ms > now_ms,
                )
            )
            return {int(p): int(e) for p, e in rows}

    def release(self, worker: str) -> None:
        """An orderly stop: hand every lease back at once, and leave the members."""
        with self._write() as conn:
            conn.execute(
                partition_leases.update()
                .where(partition_leases.c.owner == worker)
                .values(expires_ms=0)
            )
            conn.execute(cluster_members.delete().where(cluster_members.c.worker == worker))

    def all(self) -> list[Lease]:
        """Every lease, by partition (``cluster status``)."""
        with self._engine.connect() as conn:
            rows = conn.execute(select(partition_leases).order_by(partition_leases.c.partition))
            return [
                Lease(r.partition, r.owner, r.epoch, r.expires_ms, r.read, r.read_ms) for r in rows
            ]

    def members(self) -> dict[str, int]:
        """Every worker that has beaten and not stopped in order, with its last beat (ms)."""
        with self._engine.connect() as conn:
            rows = conn.execute(select(cluster_members).order_by(cluster_members.c.worker))
            return {str(r.worker): int(r.seen_ms) for r in rows}

    @staticmethod
    def _put(conn: Connection, lease: Lease, new: bool = False) -> None:
        values: dict[str, Any] = {
            "owner": lease.owner,
            "epoch": lease.epoch,
            "expires_ms": lease.expires_ms,
            "read": lease.read,
            "read_ms": lease.read_ms,
        }
        if new:
            conn.execute(partition_leases.insert().values(partition=lease.partition, **values))
        else:
            conn.execute(
                partition_leases.update()
                .where(partition_leases.c.partition == lease.partition)
                .values(**values)
            )


def holds(conn: Connection, partition: int, worker: str, epoch: int) -> bool:
    """Inside a write transaction: whether ``worker`` still holds ``partition`` at ``epoch``
    (no one took it over since). Its rows are locked for the rest of the transaction on
    PostgreSQL (SQLite's write transaction holds the whole file)."""
    row = conn.execute(
        select(partition_leases.c.owner, partition_leases.c.epoch)
        .where(partition_leases.c.partition == partition)
        .with_for_update()
    ).first()
    return row is not None and row.owner == worker and int(row.epoch) == epoch


def _seen(conn: Connection, worker: str, now_ms: int) -> None:
    updated = conn.execute(
        cluster_members.update().where(cluster_members.c.worker == worker).values(seen_ms=now_ms)
    ).rowcount
    if not updated:
        conn.execute(cluster_members.insert().values(worker=worker, seen_ms=now_ms))


class Fenced(Exception):
    """A write for partitions this worker no longer holds at the epoch it had: refused."""

    def __init__(self, lost: dict[int, int]) -> None:
        super().__init__(f"partitions {sorted(lost)} are held by another worker now")
        self.lost = lost  # each refused partition with the epoch the write was for


def fence(conn: Connection, worker: str, epochs: dict[int, int]) -> None:
    """Inside a write transaction: raise ``Fenced`` (and so roll it back) unless ``worker``
    still holds every partition of ``epochs`` at its epoch."""
    lost = {p: epoch for p, epoch in epochs.items() if not holds(conn, p, worker, epoch)}
    if lost:
        raise Fenced(lost)
