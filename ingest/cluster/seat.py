"""What one worker holds in the cluster now: its name and each held partition's epoch."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy.engine import Connection

from ingest.cluster.leases import fence

LEADER_PARTITION = 0  # its owner runs the cluster's one escalation clock and alert publisher


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class Seat:
    """This worker's leases as of its last beat (``ingest/cluster/worker.py`` keeps it)."""

    worker: str
    partitions: int
    epochs: dict[int, int] = field(default_factory=dict)
    # The leases are ours until then at least (the last beat's start plus the lease period);
    # past it, another worker may hold them: nothing is read or written for them.
    valid_until_ms: int = 0
    # Set when a store round found partitions taken over (``Fenced``): beat now.
    lost: asyncio.Event = field(default_factory=asyncio.Event)

    @classmethod
    def of(cls, name: str, partitions: int) -> Seat:
        """This process's seat: its worker name and an id of this start, which leases and the
        fence use, so two processes given one name by mistake (or a restart while the old
        process is paused) never share an epoch (review of issue 16, F2)."""
        return cls(f"{name}.{secrets.token_hex(4)}", partitions)

    @property
    def name(self) -> str:
        """The worker's name, without the id of this start."""
        return self.worker.split(".", 1)[0]

    def valid(self) -> bool:
        return _now_ms() < self.valid_until_ms

    def leader(self) -> bool:
        """Whether this worker is the one that escalates and publishes for the cluster."""
        return LEADER_PARTITION in self.epochs and self.valid()

    def check(self, partitions: set[int]) -> Callable[[Connection], None]:
        """The fence of a write for ``partitions`` (those not held now are lost already)."""
        epochs = {p: self.epochs.get(p, -1) for p in partitions}
        worker = self.worker
        return lambda conn: fence(conn, worker, epochs)
