"""The writer: straight to InfluxDB while it answers, to the spool when it does not, replayed
in order when it returns, and every message reported safe exactly when it is durable. A fake
sink stands in for InfluxDB (its outages are scripted); the spool is the real one on disk."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import pytest

from ingest.intake.batcher import Batcher
from ingest.intake.ledger import Ledger
from ingest.sinks.deadletters import DeadLetterBuffer, DeadLetterStore, NewDeadLetter
from ingest.sinks.delivery import Deliverer
from ingest.sinks.drain import Drain
from ingest.sinks.spool import Spool, SpoolCorrupt
from ingest.sinks.writer import Rejected, Retryable
from tests.unit.test_spool import drain


class FlakySink:
    """Stores lines while ``up``; raises a retryable error while down; refuses 'bad' lines."""

    def __init__(self) -> None:
        self.up = True
        self.stored: list[str] = []

    async def write(self, lines: Sequence[str]) -> None:
        if not self.up:
            raise Retryable(503, "down", None)
        if any("bad" in line for line in lines):
            raise Rejected(400, "field type conflict")
        self.stored.extend(lines)

    async def close(self) -> None:
        pass


class DeadLetters:
    def __init__(self) -> None:
        self.rows: list[NewDeadLetter] = []

    def add(self, row: NewDeadLetter) -> None:
        self.rows.append(row)

    async def flush(self) -> bool:
        return True


async def fill(batcher: Batcher, start: int, n: int) -> None:
    for i in range(start, start + n):
        batcher.add(f"river v={i}i {i}", "river", token=i)


def drain_for(tmp_path: Path, sink: FlakySink, safe: list[int]) -> tuple[Drain, Batcher, Spool]:
    batcher = Batcher(size=10, interval_s=60)
    spool = Spool(tmp_path / "spool")
    drain = Drain(
        batcher,
        Deliverer(sink, initial_backoff_s=0.01, max_backoff_s=0.02),  # type: ignore[arg-type]
        DeadLetters(),  # type: ignore[arg-type]
        Ledger(),
        spool=spool,
        spool_after_s=0.1,
        on_safe=safe.extend,
    )
    return drain, batcher, spool


async def test_an_outage_spills_to_the_spool_and_replays_everything_in_order(
    tmp_path: Path,
) -> None:
    sink, safe = FlakySink(), []
    drain, batcher, spool = drain_for(tmp_path, sink, safe)
    writer = asyncio.create_task(drain.run())
    replayer = asyncio.create_task(drain.replay())
    await fill(batcher, 0, 20)
    await asyncio.sleep(0.1)
    assert sink.stored == [f"river v={i}i {i}" for i in range(20)] and safe == list(range(20))
    sink.up = False
    await fill(batcher, 20, 30)  # three batches while InfluxDB is away
    for _ in range(100):
        if len(safe) == 50:
            break
        await asyncio.sleep(0.05)
    assert safe == list(range(50))  # safe on disk: acknowledged during the outage
    assert drain.spooling and spool.lines == 30 and len(sink.stored) == 20
    sink.up = True
    for _ in range(200):
        if spool.is_empty and not drain.spooling:
            break
        await asyncio.sleep(0.05)
    await fill(batcher, 50, 10)  # new data flows straight in again
    batcher.close()
    await asyncio.wait_for(writer, 5)
    replayer.cancel()
    assert sink.stored == [f"river v={i}i {i}" for i in range(60)]  # once each, in order
    assert spool.is_empty and drain.stats.spooled_batches == 3
    spool.close()


async def test_the_spool_survives_a_restart_and_is_replayed_first(tmp_path: Path) -> None:
    sink, safe = FlakySink(), []
    sink.up = False
    drain, batcher, spool = drain_for(tmp_path, sink, safe)
    await fill(batcher, 0, 10)
    batcher.close()
    await asyncio.wait_for(drain.run(), 5)
    assert safe == list(range(10)) and spool.lines == 10
    spool.close()  # the process ends with InfluxDB still away
    sink.up = True
    again, _, spool = drain_for(tmp_path, sink, [])
    replayer = asyncio.create_task(again.replay())
    for _ in range(100):
        if spool.is_empty:
            break
        await asyncio.sleep(0.05)
    replayer.cancel()
    assert sink.stored == [f"river v={i}i {i}" for i in range(10)]
    spool.close()


async def test_refused_lines_are_dead_lettered_and_only_then_safe(tmp_path: Path) -> None:
    sink, safe = FlakySink(), []
    drain, batcher, spool = drain_for(tmp_path, sink, safe)
    for i in range(10):
        line = "river bad=1 3" if i == 3 else f"river v={i}i {i}"
        batcher.add(line, "river", token=i)
    batcher.close()
    await asyncio.wait_for(drain.run(), 5)
    assert safe == [0, 1, 2, 4, 5, 6, 7, 8, 9]  # 3 becomes safe when its dead letter commits
    dead = drain._dead_letters.rows  # type: ignore[attr-defined]
    assert [(r.token, r.reason) for r in dead] == [(3, "write_rejected")]
    spool.close()


class FailingStore(DeadLetterStore):
    """The real SQLite store, failing its first ``failures`` commits (a locked or full disk)."""

    def __init__(self, path: Path, failures: int) -> None:
        super().__init__(path)
        self.failures = failures

    def add_many(self, rows: Iterable[NewDeadLetter]) -> int:
        if self.failures > 0:
            self.failures -= 1
            raise sqlite3.OperationalError("database or disk is full")
        return super().add_many(rows)


async def test_a_line_refused_in_replay_is_committed_before_the_spool_moves_on(
    tmp_path: Path,
) -> None:
    """Issue 13 item 5: the spool's copy of an acknowledged line is the only one; its position
    moved on while the line's dead letter still waited in memory, so a crash then lost it."""
    sink = FlakySink()
    sink.up = False
    spool = Spool(tmp_path / "spool")
    spool.append(["river v=1i 1", "river bad=1 2", "river v=3i 3"])
    store = FailingStore(tmp_path / "dl.sqlite3", failures=1)
    dead_letters = DeadLetterBuffer(store, on_commit=lambda n: None)  # no flush task: a crash
    drain = Drain(
        Batcher(size=10, interval_s=60),
        Deliverer(sink, initial_backoff_s=0.01, max_backoff_s=0.02),  # type: ignore[arg-type]
        dead_letters,
        Ledger(),
        spool=spool,
        spool_after_s=0.1,
    )
    sink.up = True
    replayer = asyncio.create_task(drain.replay())
    try:
        for _ in range(40):  # while the store fails, the spool keeps the batch
            await asyncio.sleep(0.05)
            if store.failures == 0:
                break
            assert not spool.is_empty and store.counts() == {}
        for _ in range(200):
            if spool.is_empty:
                break
            await asyncio.sleep(0.05)
        assert spool.is_empty
        assert store.counts() == {"write_rejected": 1}  # committed, not waiting in memory
    finally:
        replayer.cancel()
        spool.close()
        store.close()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 1 MiB file system (tmpfs; the tests run as root, as CI does), so ENOSPC is the
    kernel's own, not a fake."""
    where = tmp_path / "disk"
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


async def test_a_full_disk_holds_batches_and_resumes_when_space_returns(small_disk: Path) -> None:
    """Issue 13 item 6: ENOSPC in the spool escaped the writer and the service exited —
    exactly when InfluxDB was down and the spool was needed."""
    sink, safe = FlakySink(), []
    sink.up = False
    spool = Spool(small_disk / "spool")
    filler = small_disk / "filler"
    filler.write_bytes(b"x" * (1024 * 1024 - 64 * 1024))  # leaves too little for a batch
    batcher = Batcher(size=200, interval_s=60)
    drain = Drain(
        batcher,
        Deliverer(sink, initial_backoff_s=0.01, max_backoff_s=0.02),  # type: ignore[arg-type]
        DeadLetters(),  # type: ignore[arg-type]
        Ledger(),
        spool=spool,
        spool_after_s=0.1,
        on_safe=safe.extend,
    )
    writer = asyncio.create_task(drain.run())
    wide = "x" * 600  # ~120 KB a batch: more than the disk has left
    for i in range(400):
        batcher.add(f'river v={i}i,pad="{wide}" {i}', "river", token=i)
    for _ in range(100):
        if drain.trouble is not None:
            break
        await asyncio.sleep(0.05)
    assert drain.trouble is not None and "No space left" in drain.trouble
    assert not writer.done()  # the writer lives on
    assert len(safe) < 400  # what is not durable is not acknowledged
    held = len(safe)
    filler.unlink()  # space returns
    for _ in range(200):
        if len(safe) == 400:
            break
        await asyncio.sleep(0.05)
    assert safe == list(range(400)) and held < 400
    assert drain.trouble is None and drain.stats.spool_failed > 0
    batcher.close()
    await asyncio.wait_for(writer, 5)
    spool.close()


def test_a_corrupt_segment_is_set_aside_and_the_rest_replayed(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", segment_bytes=300)
    for i in range(6):
        spool.append([f"river v={i}i {i}"] * 4)
    first = sorted((tmp_path / "spool").glob("spool-*.lp"))[0]
    spool.close()
    spool = Spool(tmp_path / "spool", segment_bytes=300)
    with first.open("r+b") as f:  # the disk rots under a running spool
        f.seek(10)
        f.write(b"\xff" * 8)
    with pytest.raises(SpoolCorrupt):
        spool.peek()
    name = spool.quarantine_head()
    assert name.startswith("corrupt-") and (tmp_path / "spool" / name).exists()
    rest = drain(spool)
    assert rest and all(len(b) == 4 for b in rest) and spool.is_empty
    spool.close()


async def test_a_corrupt_segment_that_cannot_be_set_aside_does_not_end_the_replay(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 13 review (suspected, now proven and fixed): the rename that sets a corrupt
    segment aside failing (EIO, a read-only remount) ended the replay task — and with it the
    service. Now it is reported as trouble and tried again."""
    import ingest.sinks.drain as drain_module

    monkeypatch.setattr(drain_module, "REPLAY_RETRY_S", 0.01)
    sink, safe = FlakySink(), []
    drain, _batcher, spool = drain_for(tmp_path, sink, safe)
    spool.close()
    spool = Spool(tmp_path / "spool", segment_bytes=300)
    for i in range(6):
        spool.append([f"river v={i}i {i}"] * 4)
    first = sorted((tmp_path / "spool").glob("spool-*.lp"))[0]
    with first.open("r+b") as f:
        f.seek(10)
        f.write(b"\xff" * 8)
    drain._spool = spool
    real = spool.quarantine_head
    refusals = [OSError(5, "Input/output error")]

    def quarantine_head() -> str:
        if refusals:
            raise refusals.pop()
        return real()

    monkeypatch.setattr(spool, "quarantine_head", quarantine_head)
    replayer = asyncio.create_task(drain.replay())
    for _ in range(200):
        if spool.is_empty:
            break
        await asyncio.sleep(0.02)
    assert not replayer.done(), replayer.exception() if replayer.done() else None
    replayer.cancel()
    assert spool.is_empty and drain.stats.quarantined == 1 and not refusals
    every = [f"river v={i}i {i}" for i in range(6) for _ in range(4)]
    assert sink.stored and sink.stored == every[-len(sink.stored) :]  # the sound segments'
    assert len(sink.stored) < len(every)  # the corrupt one is set aside, not replayed
    assert "cannot set it aside" in (drain.trouble or "")
    spool.close()
