"""A worker's leases kept: beat, take and drop partitions, say which to read (issue 16).

Every third of the lease period: one ``Leases.beat`` (renew, hand back a surplus, take free or
expired partitions). A partition taken is judged before it is read — its engine restored and
reconciled (``Alerting.take_partition``), then its session opened; one lost (taken by
another, handed back, or its lease run out because the database could not be reached) is
dropped first — what was judged of it and not stored is dropped, so nothing of it is
acknowledged here — then its session closed. The database's fence (``leases.fence``) refuses
what a worker paused past its lease still tries to store; this loop makes it stop trying.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Protocol

from ingest.cluster.leases import Leases
from ingest.cluster.seat import Seat
from ingest.mqtt.partitions import PartitionSessions

log = logging.getLogger(__name__)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class Judge(Protocol):
    """The rule side of a worker (ingest/alerts/alerting.py): partitions judged or dropped."""

    async def take_partition(self, partition: int) -> None: ...

    def drop_partition(self, partition: int) -> int: ...


class Worker:
    """Keeps ``seat`` (what this worker holds) true to the leases in the database."""

    def __init__(
        self, leases: Leases, seat: Seat, alerting: Judge, sessions: PartitionSessions
    ) -> None:
        self._leases = leases
        self.seat = seat
        self._alerting = alerting
        self._sessions = sessions
        self.beats = 0  # successful beats (tests wait for the first)
        self.first_beat = asyncio.Event()

    async def run(self) -> None:
        """Beat until cancelled."""
        interval_s = self._leases.lease_ms / 3 / 1000
        while True:
            await self.beat()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.seat.lost.wait(), interval_s)
            self.seat.lost.clear()

    async def beat(self) -> None:
        """One beat; what it holds afterwards is read, what it lost is dropped."""
        seat = self.seat
        started = _now_ms()
        # What the store rounds found lost meanwhile (``Fenced``) is gone from seat.epochs.
        progress = {p: n for p, n in self._sessions.progress().items() if p in seat.epochs}
        try:
            # The first beat only says this worker is here (Leases.beat): started together,
            # workers then take even shares, rather than the first one everything at once.
            held = await asyncio.to_thread(
                self._leases.beat, seat.worker, started, progress, self.beats > 0
            )
        except Exception as e:
            if seat.epochs and not seat.valid():
                log.error("leases not renewed (%s) and run out: reading nothing", e)
                self._drop(set(seat.epochs))
            else:
                log.warning("could not renew the leases (%s); trying again", e)
            return
        if _now_ms() - started >= self._leases.lease_ms:
            # The beat took a whole lease (paused, or the database slow): what it renewed may
            # have run out on its way back; the next beat tells.
            self._drop(set(seat.epochs))
            return
        self._drop({p for p, epoch in seat.epochs.items() if held.get(p) != epoch})
        seat.valid_until_ms = started + self._leases.lease_ms
        for p, epoch in sorted(held.items()):
            if p in seat.epochs:
                continue
            try:
                await self._alerting.take_partition(p)
            except Exception:
                # Its state or alerts could not be read (the database away): not read here
                # until a later beat manages it; the lease, still ours, keeps others off it.
                log.exception("could not take partition %d; trying again next beat", p)
                continue
            seat.epochs[p] = epoch
        self._sessions.assign(set(seat.epochs))
        self.beats += 1
        self.first_beat.set()

    def _drop(self, lost: set[int]) -> None:
        for p in sorted(lost):
            log.warning("partition %d is no longer this worker's", p)
            self.seat.epochs.pop(p, None)
            self._alerting.drop_partition(p)
        if lost:
            self._sessions.assign(set(self.seat.epochs))

    async def release(self) -> None:
        """An orderly stop: hand every lease back so others take them at once."""
        try:
            await asyncio.to_thread(self._leases.release, self.seat.worker)
        except Exception:
            log.exception("could not hand the leases back; they run out by themselves")
        self.seat.epochs.clear()
