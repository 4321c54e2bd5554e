"""Batching, retries and bisection, with a small fake sink behind the LineSink protocol."""

import asyncio
from collections.abc import Sequence

import pytest

from ingest.intake.batcher import Batcher
from ingest.intake.ledger import Ledger
from ingest.sinks.delivery import Deliverer
from ingest.sinks.drain import Drain
from ingest.sinks.writer import Rejected, Retryable, TooLarge, error_for


class FakeSink:
    """Stores lines; refuses any request containing a line with 'bad'; fails on cue."""

    def __init__(self, failures: list[Exception] | None = None, max_lines: int = 10**9) -> None:
        self.stored: list[str] = []
        self.requests = 0
        self.failures = failures or []
        self.max_lines = max_lines

    async def write(self, lines: Sequence[str]) -> None:
        self.requests += 1
        if self.failures:
            raise self.failures.pop(0)
        if len(lines) > self.max_lines:
            raise TooLarge(413, "too large")
        if any("bad" in line for line in lines):
            raise Rejected(400, "field type conflict")
        self.stored.extend(lines)

    async def close(self) -> None:
        pass


async def test_rejected_lines_are_isolated_and_good_ones_written() -> None:
    sink = FakeSink()
    lines = [f"m v={i}i {i}" for i in range(100)]
    lines[17] = "m bad=1 17"
    lines[63] = "m bad=1 63"
    outcome = await Deliverer(sink).deliver(lines)
    assert outcome.written == 98
    assert [line for line, _ in outcome.refused] == ["m bad=1 17", "m bad=1 63"]
    assert "field type conflict" in outcome.refused[0][1]
    assert sorted(sink.stored) == sorted(x for x in lines if "bad" not in x)
    assert sink.requests < 30  # bisection, not one request per line


async def test_too_large_is_split_until_it_fits() -> None:
    sink = FakeSink(max_lines=10)
    lines = [f"m v={i}i {i}" for i in range(64)]
    outcome = await Deliverer(sink).deliver(lines)
    assert outcome.written == 64 and not outcome.refused
    assert sorted(sink.stored) == sorted(lines)


async def test_retryable_errors_are_retried_honouring_retry_after() -> None:
    sink = FakeSink(failures=[Retryable(503, "down", None), Retryable(429, "busy", 0.3)])
    loop = asyncio.get_running_loop()
    started = loop.time()
    outcome = await Deliverer(sink, initial_backoff_s=0.01, max_backoff_s=0.05).deliver(
        ["m v=1i 1"]
    )
    assert outcome.written == 1
    assert sink.requests == 3
    assert loop.time() - started >= 0.3  # waited at least what Retry-After asked


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, Rejected),
        (422, Rejected),
        (413, TooLarge),
        (429, Retryable),
        (500, Retryable),
        (503, Retryable),
        (404, Retryable),
        (401, Retryable),
    ],
)
def test_error_table(status: int, kind: type[Exception]) -> None:
    assert type(error_for(status, "x")) is kind


def test_retry_after_header_is_read() -> None:
    error = error_for(429, "slow down", {"Retry-After": "7"})
    assert isinstance(error, Retryable) and error.retry_after == 7.0


async def test_batcher_seals_by_size_and_by_age() -> None:
    batcher = Batcher(size=3, interval_s=0.1)
    for i in range(4):
        batcher.add(f"l{i}", "river")
    assert batcher.pending_batches == 1 and batcher.in_flight == 4
    timer = asyncio.create_task(batcher.run_timer())
    first = await batcher.next_batch()
    second = await asyncio.wait_for(batcher.next_batch(), 1.0)  # sealed by age
    assert first is not None and first.lines == ["l0", "l1", "l2"]
    assert second is not None and second.lines == ["l3"]
    batcher.done(first)
    batcher.done(second)
    assert batcher.in_flight == 0
    batcher.close()
    await timer
    assert await batcher.next_batch() is None


async def test_batcher_add_never_waits_and_close_loses_nothing() -> None:
    # Memory is bounded upstream by the broker's window of unacknowledged messages, so
    # add() takes every line at once even with the writer far behind.
    batcher = Batcher(size=1, interval_s=10)
    for i in range(50):
        batcher.add(f"l{i}", "river", token=i)
    assert batcher.pending_batches == 50 and batcher.in_flight == 50
    batcher.close()
    seen: list[str] = []
    tokens: list[int | None] = []
    while (batch := await batcher.next_batch()) is not None:
        seen += batch.lines
        tokens += batch.tokens
        batcher.done(batch)
    assert seen == [f"l{i}" for i in range(50)] and tokens == list(range(50))
    assert batcher.in_flight == 0


class FakeDeadLetters:
    def __init__(self) -> None:
        self.rows: list[object] = []

    def add(self, row: object) -> None:
        self.rows.append(row)


async def test_drain_accounts_for_every_line() -> None:
    batcher = Batcher(size=5, interval_s=10)
    ledger = Ledger()
    dead = FakeDeadLetters()
    for i in range(12):
        batcher.add("river bad=1 1" if i == 4 else f"river v={i}i {i}", "river")
    batcher.close()
    await Drain(batcher, Deliverer(FakeSink()), dead, ledger).run()  # type: ignore[arg-type]
    assert ledger.written["river"] == 11
    assert len(dead.rows) == 1 and ledger.rejected["write_rejected"] == 1
    assert batcher.in_flight == 0
