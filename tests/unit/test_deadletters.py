"""The dead-letter store on a real SQLite file and on a real PostgreSQL 15 (each test that takes
``where`` runs on both, a fresh database each): per-reason caps, counted pruning, and two
stores on one database (a cluster's workers) writing and pruning at once."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from ingest.sinks.deadletters import DeadLetterStore, NewDeadLetter
from tests.postgres import drop_database, new_database


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path | str]:
    """An empty store: the default SQLite file, or a database of its own on the session's
    PostgreSQL (the shared database of ``CITYSENSE_DATABASE_URL``)."""
    if request.param == "sqlite":
        yield tmp_path / "dl.sqlite3"
        return
    fresh = new_database(request.getfixturevalue("postgres_url"), "deadletters")
    yield fresh
    drop_database(fresh)


def rows(reason: str, n: int, start: int = 0) -> list[NewDeadLetter]:
    return [NewDeadLetter(start + i, "iot/x/y/telemetry", reason, "d", b"{}") for i in range(n)]


def test_a_junk_flood_never_evicts_write_rejected_rows(where: Path | str) -> None:
    """Issue 13 item 11: one FIFO over all reasons let 100,000 junk messages evict the only
    copy of acknowledged data InfluxDB refused."""
    store = DeadLetterStore(where, max_rows=1000)
    store.add_many(rows("write_rejected", 50))
    for i in range(20):  # a hostile device: 20,000 junk messages in batches
        store.add_many(rows("invalid_json", 1000, start=i * 1000))
    counts = store.counts()
    assert counts == {"write_rejected": 50, "invalid_json": 1000}
    assert store.pruned() == {"invalid_json": 19_000}
    assert [d.received_ms for d in store.list(reason="invalid_json", limit=1)] == [19_999]
    store.close()


def test_pruning_precious_rows_is_counted_and_survives_a_restart(
    where: Path | str, caplog: pytest.LogCaptureFixture
) -> None:
    store = DeadLetterStore(where, max_rows=10)
    store.add_many(rows("write_rejected", 25))
    assert store.counts() == {"write_rejected": 10}
    assert store.pruned() == {"write_rejected": 15}
    assert any(r.levelname == "ERROR" and "15 oldest" in r.getMessage() for r in caplog.records)
    store.close()
    again = DeadLetterStore(where, max_rows=10)
    again.add_many(rows("write_rejected", 3, start=100))
    assert again.counts() == {"write_rejected": 10}
    assert again.pruned() == {"write_rejected": 18}
    assert [d.received_ms for d in again.list(limit=2)] == [102, 101]
    again.close()


def test_listing_keeps_payloads_and_sizes(where: Path | str) -> None:
    store = DeadLetterStore(where)
    big = b"\xff" + b"x" * 5000
    store.add_many([NewDeadLetter(1, "t", "too_large", "big", big, size=9999)])
    [letter] = store.list(reason="too_large")
    assert letter.payload.startswith("\ufffdxxx") and len(letter.payload) == 4096
    assert letter.payload_size == 9999 and store.list(reason="schema") == []
    store.close()


def test_two_stores_on_one_database_see_each_other_and_keep_the_cap(where: Path | str) -> None:
    """Issue 16: two workers on the shared database write and prune at once; each lists the
    other's rows, and each reason keeps at most ``max_rows`` with every cut row counted."""
    a = DeadLetterStore(where, max_rows=300)
    b = DeadLetterStore(where, max_rows=300)
    a.add_many(rows("schema", 5))
    b.add_many(rows("schema", 5, start=1000))
    assert {d.received_ms for d in a.list()} == {*range(5), *range(1000, 1005)}
    assert b.counts() == {"schema": 10}

    def write(store: DeadLetterStore, start: int) -> None:
        for i in range(20):
            store.add_many(rows("schema", 50, start=start + i * 50))

    threads = [
        threading.Thread(target=write, args=(a, 10_000)),
        threading.Thread(target=write, args=(b, 20_000)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert a.counts() == b.counts() == {"schema": 300}
    assert a.pruned() == {"schema": 10 + 2000 - 300}
    newest = [d.id for d in b.list(limit=1000)]
    assert len(newest) == 300 and newest == sorted(newest, reverse=True)
    a.add_many(rows("schema", 1, start=99_999))  # a's memory of the counts is stale: recounted
    assert b.counts() == {"schema": 300} and b.pruned() == {"schema": 1711}
    a.close()
    b.close()


def test_commits_are_fsynced(tmp_path: Path) -> None:
    """Issue 13 item 4: the PUBACK follows the commit, so the commit is synchronous=FULL."""
    store = DeadLetterStore(tmp_path / "dl.sqlite3")
    with store._engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
    store.close()
    assert sqlite3.connect(tmp_path / "dl.sqlite3").execute("PRAGMA journal_mode").fetchone() == (
        "wal",
    )


OLD_SCHEMA = """
CREATE TABLE dead_letter (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    received_ms INTEGER NOT NULL,
    topic TEXT NOT NULL,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL,
    payload BLOB NOT NULL,
    payload_size INTEGER NOT NULL
);
CREATE INDEX dead_letter_reason ON dead_letter (reason, id);
CREATE TABLE pruned (reason TEXT PRIMARY KEY, rows INTEGER NOT NULL);
INSERT INTO dead_letter (received_ms, topic, reason, detail, payload, payload_size)
    VALUES (7, 'iot/a/b/telemetry', 'schema', 'old', X'7B7D', 2);
INSERT INTO pruned VALUES ('schema', 4);
"""


def test_a_data_dir_of_the_sqlite3_store_opens_as_it_is(tmp_path: Path) -> None:
    """A deadletters.sqlite3 written before SQLAlchemy: its rows read, and writes go on."""
    path = tmp_path / "deadletters.sqlite3"
    with sqlite3.connect(path) as db:
        db.executescript(OLD_SCHEMA)
    store = DeadLetterStore(path, max_rows=2)
    assert [(d.received_ms, d.detail, d.payload) for d in store.list()] == [(7, "old", "{}")]
    store.add_many(rows("schema", 2, start=100))
    assert store.counts() == {"schema": 2} and store.pruned() == {"schema": 5}
    store.close()
