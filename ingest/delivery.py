"""Getting a batch of lines into InfluxDB: retry what is worth retrying, isolate what is bad.

The one place that decides what happens to a batch after the sink raised, so every sink
stays a thin HTTP call. Bad lines are found by bisection: a rejected batch is split in
halves until each refused line stands alone; the good halves are written (a re-sent good
line overwrites itself in InfluxDB, so InfluxDB 1.x's partial writes do no harm).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    wait_random_exponential,
)

from ingest.batcher import Batch, Batcher
from ingest.deadletters import DeadLetterBuffer, NewDeadLetter
from ingest.decode import Reason
from ingest.ledger import Ledger
from ingest.writer import LineSink, Rejected, Retryable, TooLarge

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    """What became of a batch: lines written and lines the database refused, with why."""

    written: int = 0
    refused: list[tuple[str, str]] = field(default_factory=list)


# A server asking for longer than this is more likely confused than busy.
MAX_RETRY_AFTER_S = 120.0


class _BackoffHonouringRetryAfter:
    """Jittered exponential backoff, but never shorter than the server's Retry-After."""

    def __init__(self, initial: float, maximum: float) -> None:
        self._jitter = wait_random_exponential(multiplier=initial, max=maximum)

    def __call__(self, state: RetryCallState) -> float:
        delay = float(self._jitter(state))
        error = state.outcome.exception() if state.outcome else None
        if isinstance(error, Retryable) and error.retry_after is not None:
            delay = max(delay, min(error.retry_after, MAX_RETRY_AFTER_S))
        return delay


def _log_retry(state: RetryCallState) -> None:
    error = state.outcome.exception() if state.outcome else None
    delay = state.next_action.sleep if state.next_action else 0.0
    log.warning(
        "InfluxDB write failed (%s); retry %d in %.1f s", error, state.attempt_number, delay
    )


class Deliverer:
    """Writes batches through a sink with retries (until it succeeds) and bisection."""

    def __init__(
        self, sink: LineSink, *, initial_backoff_s: float = 0.2, max_backoff_s: float = 10
    ):
        self._sink = sink
        self._wait = _BackoffHonouringRetryAfter(initial_backoff_s, max_backoff_s)

    async def deliver(self, lines: Sequence[str]) -> Outcome:
        """Write ``lines``; return how many were written and which were refused."""
        outcome = Outcome()
        await self._deliver(lines, outcome)
        return outcome

    async def _deliver(self, lines: Sequence[str], outcome: Outcome) -> None:
        try:
            await self._write_retrying(lines)
            outcome.written += len(lines)
        except (Rejected, TooLarge) as e:
            if len(lines) == 1:
                if isinstance(e, TooLarge):
                    log.error("a single line is over InfluxDB's request limit: %s", e)
                outcome.refused.append((lines[0], str(e)))
                return
            middle = len(lines) // 2
            await self._deliver(lines[:middle], outcome)
            await self._deliver(lines[middle:], outcome)

    async def _write_retrying(self, lines: Sequence[str]) -> None:
        # Retries forever: the caller bounds memory (the batcher's queue blocks the consumer).
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(Retryable),
            wait=self._wait,
            before_sleep=_log_retry,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                await self._sink.write(lines)


async def drain(
    batcher: Batcher,
    deliverer: Deliverer,
    dead_letters: DeadLetterBuffer,
    ledger: Ledger,
    observe: Callable[[int, float], None] | None = None,
) -> None:
    """Write sealed batches until the batcher is closed and empty.

    ``observe(points, seconds)`` is told of each batch written (for metrics).
    """
    while (batch := await batcher.next_batch()) is not None:
        try:
            started = time.perf_counter()
            outcome = await deliverer.deliver(batch.lines)
            if observe is not None:
                observe(len(batch.lines), time.perf_counter() - started)
            if outcome.refused:
                await _dead_letter_refused(outcome.refused, batch, dead_letters, ledger)
            else:
                ledger.written.update(batch.per_measurement)
        finally:
            batcher.done(batch)


async def _dead_letter_refused(
    refused: list[tuple[str, str]], batch: Batch, dead_letters: DeadLetterBuffer, ledger: Ledger
) -> None:
    # Rare path: recount per measurement from the lines that did go in.
    refused_lines = {line for line, _ in refused}
    for line in batch.lines:
        if line not in refused_lines:
            ledger.written[_measurement(line)] += 1
    now_ms = time.time_ns() // 1_000_000
    for line, error in refused:
        log.error("InfluxDB refused a point: %s", error)
        ledger.rejected[Reason.WRITE_REJECTED] += 1
        await dead_letters.add(
            NewDeadLetter(
                now_ms, f"influx:{_measurement(line)}", Reason.WRITE_REJECTED, error, line.encode()
            )
        )


def _measurement(line: str) -> str:
    # Measurement names here never contain escaped commas or spaces (see lineprotocol).
    return line.split(",", 1)[0].split(" ", 1)[0]
