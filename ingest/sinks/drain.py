"""The writer side of the pipeline: sealed batches into InfluxDB, or into the spool.

One task (``Drain.run``) takes sealed batches in order and writes them. When InfluxDB keeps
failing (429/5xx/connection errors) for ``spool_after_s``, the batch goes to the on-disk spool
instead, and so do the batches after it without waiting, until InfluxDB takes a write again.
A second task (``Drain.replay``) writes spooled batches back, oldest first, and is the one that
notices InfluxDB has returned; new batches then go straight to InfluxDB again while the
replay continues. Either way a batch's messages are reported safe (``on_safe``, which sends
their PUBACKs) only once they are in InfluxDB or fsync'd in the spool.

When the spool is full (``SpoolFull``), nothing is dropped: the writer keeps retrying InfluxDB
itself, the batcher fills, the consumer stops taking messages and the broker keeps them — the
broker's queue is the last buffer. Each time this happens it is counted (``spool_full``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from ingest.intake.batcher import Batch, Batcher
from ingest.intake.congestion import CONGESTION_MEASUREMENT
from ingest.intake.decode import Reason
from ingest.intake.ledger import Ledger
from ingest.sinks.deadletters import DeadLetterBuffer, NewDeadLetter
from ingest.sinks.delivery import Deliverer, Outcome, Unavailable
from ingest.sinks.spool import Spool, SpoolCorrupt, SpooledBatch, SpoolError, SpoolFull

log = logging.getLogger(__name__)

Safe = Callable[[list[int]], None]
REPLAY_IDLE_S = 1.0  # how often an idle replayer looks at the spool again
REPLAY_RETRY_S = 2.0  # how long the replayer waits after InfluxDB failed it again
ALERT_MEASUREMENT = "alert"
# citysense's own points (alerts, road segments' congestion), outside the message ledger
OWN_MEASUREMENTS = frozenset({ALERT_MEASUREMENT, CONGESTION_MEASUREMENT})


def _tokens(tokens: list[int | None]) -> list[int]:
    return [t for t in tokens if t is not None]


def measurement_of_line(line: str) -> str:
    """The measurement a line belongs to (ours never contain escaped commas or spaces)."""
    return line.split(",", 1)[0].split(" ", 1)[0]


@dataclass
class DrainStats:
    """Counts for the status line and metrics."""

    spooled_batches: int = 0
    replayed_batches: int = 0
    spool_full: int = 0  # times the spool refused a batch (backpressure to the broker)
    spool_failed: int = 0  # times the disk failed the spool (ENOSPC, EIO): backpressure too
    quarantined: int = 0  # corrupt segments set aside during replay


class Drain:
    """Writes sealed batches; spills to the spool during outages and replays it after."""

    def __init__(
        self,
        batcher: Batcher,
        deliverer: Deliverer,
        dead_letters: DeadLetterBuffer,
        ledger: Ledger,
        *,
        spool: Spool | None = None,
        spool_after_s: float = 5.0,
        on_safe: Safe = lambda tokens: None,
        observe: Callable[[int, float], None] | None = None,
    ) -> None:
        self._batcher = batcher
        self._deliverer = deliverer
        self._dead_letters = dead_letters
        self._ledger = ledger
        self._spool = spool
        self._spool_after_s = spool_after_s
        self._on_safe = on_safe
        self._observe = observe
        self._influx_down = False  # set by a spill, cleared by a successful replay
        self._spooled_one = asyncio.Event()
        self.stats = DrainStats()
        # Why the spool cannot be used right now (disk full or failing), for /ready and the
        # log; None while it works.
        self.trouble: str | None = None

    @property
    def spooling(self) -> bool:
        """Whether new batches currently go to the spool."""
        return self._influx_down

    async def run(self) -> None:
        """Write sealed batches until the batcher is closed and empty."""
        while (batch := await self._batcher.next_batch()) is not None:
            try:
                await self._write(batch)
            finally:
                self._batcher.done(batch)

    async def _write(self, batch: Batch) -> None:
        if self._spool is not None and self._influx_down and await self._to_spool(batch):
            return
        bound = self._spool_after_s if self._spool is not None else None
        started = time.perf_counter()
        try:
            outcome = await self._deliverer.deliver(batch.lines, give_up_after_s=bound)
        except Unavailable as e:
            log.warning("InfluxDB unavailable for %.0f s (%s): spooling", self._spool_after_s, e)
            self._influx_down = True
            if await self._to_spool(batch):
                return
            # The spool is full or its disk fails: hold this batch (and so, through the
            # batcher, the messages behind it at the broker) and try InfluxDB and the spool in
            # turn until one takes it.
            held = await self._hold(batch)
            if held is None:
                return
            outcome = held
        if self._observe is not None:
            self._observe(len(batch.lines), time.perf_counter() - started)
        await self._settle(batch, outcome)

    async def _hold(self, batch: Batch) -> Outcome | None:
        """InfluxDB and the spool in turn until one takes ``batch``; None if the spool did."""
        while True:
            try:
                return await self._deliverer.deliver(
                    batch.lines, give_up_after_s=self._spool_after_s
                )
            except Unavailable:
                if await self._to_spool(batch):
                    return None

    async def _to_spool(self, batch: Batch) -> bool:
        """Append the batch to the spool (durably); False if the spool is full or failing."""
        assert self._spool is not None
        try:
            await asyncio.to_thread(self._spool.append, batch.lines)
        except SpoolFull:
            self.stats.spool_full += 1
            self._trouble(f"spool full ({self._spool.size_bytes} bytes)")
            return False
        except (OSError, SpoolError) as e:
            # ENOSPC, EIO, a read-only remount: the documented backpressure, never a crash.
            self.stats.spool_failed += 1
            self._trouble(f"spool cannot be written: {e}")
            return False
        if self.trouble is not None:
            log.warning("spool takes batches again (was: %s)", self.trouble)
            self.trouble = None
        self.stats.spooled_batches += 1
        self._ledger.spooled += len(batch.lines) - batch.own
        self._on_safe(_tokens(batch.tokens))
        self._spooled_one.set()
        return True

    def _trouble(self, why: str) -> None:
        if why != self.trouble:
            log.error(
                "%s: holding batches, and the messages behind them at the broker, until "
                "InfluxDB or the spool takes them",
                why,
            )
        self.trouble = why

    async def _settle(self, batch: Batch, outcome: Outcome) -> None:
        if not outcome.refused:
            self._ledger.written.update(batch.per_measurement)
            self._on_safe(_tokens(batch.tokens))
            return
        await self._dead_letter_refused(batch, outcome.refused)

    async def _dead_letter_refused(self, batch: Batch, refused: list[tuple[str, str]]) -> None:
        # Rare path: recount per measurement from the lines that did go in, and find the tokens
        # of the refused ones (the same text may come twice: a redelivered message).
        errors: dict[str, list[str]] = {}
        for line, error in refused:
            errors.setdefault(line, []).append(error)
        written: list[int] = []
        for line, token in zip(batch.lines, batch.tokens, strict=True):
            waiting = errors.get(line)
            if not waiting:
                measurement = measurement_of_line(line)
                if measurement not in OWN_MEASUREMENTS:  # outside the ledger
                    self._ledger.written[measurement] += 1
                if token is not None:
                    written.append(token)
                continue
            self._dead_letter(line, waiting.pop(), token)
        self._on_safe(written)

    def _dead_letter(self, line: str, error: str, token: int | None) -> None:
        log.error("InfluxDB refused a point: %s", error)
        self._ledger.rejected[Reason.WRITE_REJECTED] += 1
        self._dead_letters.add(
            NewDeadLetter(
                time.time_ns() // 1_000_000,
                f"influx:{measurement_of_line(line)}",
                Reason.WRITE_REJECTED,
                error,
                line.encode(),
                token,
            )
        )

    # -- replay ---------------------------------------------------------------------------------

    async def replay(self) -> None:
        """Write spooled batches back, oldest first, until cancelled."""
        if self._spool is None:
            return
        while True:
            try:
                spooled = await asyncio.to_thread(self._spool.peek)
            except SpoolCorrupt as e:
                # Set aside (kept for inspection), counted, and the replay goes on.
                try:
                    name = await asyncio.to_thread(self._spool.quarantine_head)
                except OSError as moving:  # the disk that rotted may refuse the rename too
                    self._trouble(f"spool: {e}; cannot set it aside: {moving}")
                    await asyncio.sleep(REPLAY_RETRY_S)
                    continue
                self.stats.quarantined += 1
                log.error("spool: %s; segment set aside as %s, the replay goes on", e, name)
                continue
            except (OSError, SpoolError) as e:
                self._trouble(f"spool cannot be read: {e}")
                await asyncio.sleep(REPLAY_RETRY_S)
                continue
            if spooled is None:
                self._spooled_one.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._spooled_one.wait(), REPLAY_IDLE_S)
                continue
            try:
                outcome = await self._deliverer.deliver(
                    spooled.lines, give_up_after_s=self._spool_after_s
                )
            except Unavailable:
                await asyncio.sleep(REPLAY_RETRY_S)
                continue
            await self._replayed(spooled, outcome)

    async def _replayed(self, spooled: SpooledBatch, outcome: Outcome) -> None:
        refused = {line for line, _ in outcome.refused}
        for line, error in outcome.refused:
            self._dead_letter(line, error, None)  # acknowledged when it was spooled
        # The spool's copy is the only one: its position moves past these lines only once their
        # dead letters are committed (a crash in between replays the batch; a duplicate dead
        # letter is better than none).
        while refused and not await self._dead_letters.flush():  # noqa: ASYNC110 (a retry)
            await asyncio.sleep(REPLAY_RETRY_S)
        assert self._spool is not None
        try:
            await asyncio.to_thread(self._spool.commit, spooled)
        except OSError as e:
            # The position on disk lags (the next commit writes it): after a crash meanwhile
            # the batch is written again, which InfluxDB takes as the same points.
            self._trouble(f"spool position cannot be written: {e}")
        self._ledger.replayed.update(
            Counter(
                m
                for line in spooled.lines
                if line not in refused and (m := measurement_of_line(line)) not in OWN_MEASUREMENTS
            )
        )
        self.stats.replayed_batches += 1
        if self._influx_down:
            log.info("InfluxDB takes writes again: new batches go straight to it")
            self._influx_down = False
