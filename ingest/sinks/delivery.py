"""Getting a batch of lines into InfluxDB: retry what is worth retrying, isolate what is bad.

The one place that decides what happens to a batch after the sink raised, so every sink
stays a thin HTTP call. Bad lines are found by bisection: a rejected batch is split in
halves until each refused line stands alone; the good halves are written (a re-sent good
line overwrites itself in InfluxDB, so InfluxDB 1.x's partial writes do no harm).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_before_delay,
    stop_never,
    wait_random_exponential,
)

from ingest.sinks.writer import LineSink, Rejected, Retryable, TooLarge

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


class Unavailable(Exception):
    """InfluxDB kept failing (429/5xx/connection) for longer than the caller would wait."""


class Deliverer:
    """Writes batches through a sink with retries (until it succeeds) and bisection."""

    def __init__(
        self, sink: LineSink, *, initial_backoff_s: float = 0.2, max_backoff_s: float = 10
    ):
        self._sink = sink
        self._wait = _BackoffHonouringRetryAfter(initial_backoff_s, max_backoff_s)

    async def deliver(self, lines: Sequence[str], give_up_after_s: float | None = None) -> Outcome:
        """Write ``lines``; return how many were written and which were refused.

        Retries 429/5xx/connection errors until they succeed, or, with ``give_up_after_s``,
        raises ``Unavailable`` once retrying has gone on that long (the caller spools).
        """
        outcome = Outcome()
        await self._deliver(lines, outcome, give_up_after_s)
        return outcome

    async def _deliver(
        self, lines: Sequence[str], outcome: Outcome, give_up_after_s: float | None
    ) -> None:
        try:
            await self._write_retrying(lines, give_up_after_s)
            outcome.written += len(lines)
        except (Rejected, TooLarge) as e:
            if len(lines) == 1:
                if isinstance(e, TooLarge):
                    log.error("a single line is over InfluxDB's request limit: %s", e)
                outcome.refused.append((lines[0], str(e)))
                return
            middle = len(lines) // 2
            await self._deliver(lines[:middle], outcome, give_up_after_s)
            await self._deliver(lines[middle:], outcome, give_up_after_s)

    async def _write_retrying(self, lines: Sequence[str], give_up_after_s: float | None) -> None:
        # Without a bound, retries forever: the caller bounds memory (the batcher's queue
        # blocks the consumer, and unacknowledged messages stop the broker's sending). With
        # one, stop *before* a sleep would pass it, so spooling starts at the bound, not a
        # backoff later.
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(Retryable),
            wait=self._wait,
            stop=stop_never if give_up_after_s is None else stop_before_delay(give_up_after_s),
            before_sleep=_log_retry,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    await self._sink.write(lines)
        except Retryable as e:
            raise Unavailable(str(e)) from e
