"""The dead-letter store on a real SQLite file: per-reason caps, counted pruning."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from ingest.sinks.deadletters import DeadLetterStore, NewDeadLetter


def rows(reason: str, n: int, start: int = 0) -> list[NewDeadLetter]:
    return [NewDeadLetter(start + i, "iot/x/y/telemetry", reason, "d", b"{}") for i in range(n)]


def test_a_junk_flood_never_evicts_write_rejected_rows(tmp_path: Path) -> None:
    """Issue 13 item 11: one FIFO over all reasons let 100,000 junk messages evict the only
    copy of acknowledged data InfluxDB refused."""
    store = DeadLetterStore(tmp_path / "dl.sqlite3", max_rows=1000)
    store.add_many(rows("write_rejected", 50))
    for i in range(20):  # a hostile device: 20,000 junk messages in batches
        store.add_many(rows("invalid_json", 1000, start=i * 1000))
    counts = store.counts()
    assert counts == {"write_rejected": 50, "invalid_json": 1000}
    assert store.pruned() == {"invalid_json": 19_000}
    assert [d.received_ms for d in store.list(reason="invalid_json", limit=1)] == [19_999]
    store.close()


def test_pruning_precious_rows_is_counted_and_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "dl.sqlite3"
    store = DeadLetterStore(path, max_rows=10)
    store.add_many(rows("write_rejected", 25))
    assert store.counts() == {"write_rejected": 10}
    assert store.pruned() == {"write_rejected": 15}
    store.close()
    again = DeadLetterStore(path, max_rows=10)
    again.add_many(rows("write_rejected", 3, start=100))
    assert again.counts() == {"write_rejected": 10}
    assert again.pruned() == {"write_rejected": 18}
    again.close()


def test_commits_are_fsynced(tmp_path: Path) -> None:
    """Issue 13 item 4: the PUBACK follows the commit, so the commit is synchronous=FULL."""
    store = DeadLetterStore(tmp_path / "dl.sqlite3")
    level = store._db.execute("PRAGMA synchronous").fetchone()[0]
    assert level == 2  # FULL
    store.close()
    assert sqlite3.connect(tmp_path / "dl.sqlite3").execute("PRAGMA journal_mode").fetchone() == (
        "wal",
    )
