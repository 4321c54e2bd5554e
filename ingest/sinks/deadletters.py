"""The dead-letter store: rejected messages kept in SQLite for operators to inspect.

Rows are written in batches from the pipeline's flush task through a worker thread, so a
long run of bad input costs one INSERT per batch, never a blocking call on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel

log = logging.getLogger(__name__)

# Enough of a payload to see what was wrong; an oversize one is not kept whole.
MAX_KEPT_BYTES = 4096

_SCHEMA = """
CREATE TABLE IF NOT EXISTS dead_letter (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    received_ms INTEGER NOT NULL,
    topic TEXT NOT NULL,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL,
    payload BLOB NOT NULL,
    payload_size INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS dead_letter_reason ON dead_letter (reason, id);
CREATE TABLE IF NOT EXISTS pruned (
    reason TEXT PRIMARY KEY,
    rows INTEGER NOT NULL
);
"""

# The only copy of data we acknowledged (InfluxDB refused it) or of a message we failed on:
# pruning these loses something, so each time it happens the log says so, loudly.
_PRECIOUS = frozenset({"write_rejected", "internal_error"})


def store_path(data_dir: Path) -> Path:
    """Where the dead-letter database lives in a data directory."""
    return data_dir / "deadletters.sqlite3"


@dataclass(frozen=True, slots=True)
class NewDeadLetter:
    """A rejection on its way to the store."""

    received_ms: int
    topic: str
    reason: str
    detail: str
    payload: bytes
    token: int | None = None  # the MQTT message's ack token (ingest/mqtt/acks.py), if it has one
    size: int | None = None  # the payload's size as received, if ``payload`` is cut short


class DeadLetter(BaseModel):
    """A stored rejection, as listed to operators."""

    id: int
    received_ms: int
    topic: str
    reason: str
    detail: str
    payload: str  # UTF-8 with replacement characters; the first MAX_KEPT_BYTES only
    payload_size: int


class DeadLetterStore:
    """SQLite-backed store of rejected messages, pruned to the newest ``max_rows`` per reason.

    Per reason, so a flood of junk from a hostile device (``invalid_json``, ``schema``, …)
    never pushes out the rows that matter — ``write_rejected`` above all. What is pruned is
    counted per reason in the same transaction (``pruned()``, and ``/metrics``).
    """

    def __init__(self, path: Path, max_rows: int = 100_000) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._max_rows = max_rows
        # One connection, shared by the flush task's worker thread and the API's readers: the
        # lock keeps them from using it at the same time (sqlite3 connections are not).
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")  # readers (CLI, API) never block writes
        # FULL: a PUBACK follows the commit, so the commit must survive a power cut (NORMAL in
        # WAL mode may lose the last transactions). Measured cost: see README, delivery.
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._counts: dict[str, int] = dict(
            self._db.execute("SELECT reason, COUNT(*) FROM dead_letter GROUP BY reason").fetchall()
        )

    def add_many(self, rows: Iterable[NewDeadLetter]) -> int:
        """Insert rows in one transaction; return how many."""
        values = [
            (
                r.received_ms,
                r.topic,
                r.reason,
                r.detail,
                r.payload[:MAX_KEPT_BYTES],
                len(r.payload) if r.size is None else r.size,
            )
            for r in rows
        ]
        if not values:
            return 0
        with self._lock, self._db:
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT INTO dead_letter"
                " (received_ms, topic, reason, detail, payload, payload_size)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                values,
            )
            counts, pruned = self._prune({r[2] for r in values}, [r[2] for r in values])
        self._counts = counts  # once committed: a failed transaction leaves the old counts
        for reason, n in pruned.items():
            say = log.error if reason in _PRECIOUS else log.info
            say(
                "dead letters: %d oldest %s rows pruned (cap %d per reason)",
                n,
                reason,
                self._max_rows,
            )
        return len(values)

    def _prune(self, reasons: set[str], added: list[str]) -> tuple[dict[str, int], dict[str, int]]:
        """Inside the insert's transaction: cut each reason to ``max_rows``; count the cut."""
        counts = dict(self._counts)
        for reason in added:
            counts[reason] = counts.get(reason, 0) + 1
        pruned: dict[str, int] = {}
        for reason in sorted(reasons):
            excess = counts[reason] - self._max_rows
            if excess <= 0:
                continue
            self._db.execute(
                "DELETE FROM dead_letter WHERE id IN"
                " (SELECT id FROM dead_letter WHERE reason = ? ORDER BY id LIMIT ?)",
                (reason, excess),
            )
            self._db.execute(
                "INSERT INTO pruned (reason, rows) VALUES (?, ?)"
                " ON CONFLICT (reason) DO UPDATE SET rows = rows + excluded.rows",
                (reason, excess),
            )
            counts[reason] -= excess
            pruned[reason] = excess
        return counts, pruned

    def pruned(self) -> dict[str, int]:
        """Rows pruned so far, per reason (kept across restarts)."""
        with self._lock:
            rows = self._db.execute("SELECT reason, rows FROM pruned").fetchall()
        return {reason: n for reason, n in rows}

    def list(self, *, reason: str | None = None, limit: int = 100) -> list[DeadLetter]:
        """Newest first, optionally of one reason."""
        query = (
            "SELECT id, received_ms, topic, reason, detail, payload, payload_size FROM dead_letter"
        )
        params: tuple[object, ...] = ()
        if reason is not None:
            query += " WHERE reason = ?"
            params = (reason,)
        query += " ORDER BY id DESC LIMIT ?"
        with self._lock:
            rows = self._db.execute(query, (*params, limit)).fetchall()
        return [
            DeadLetter(
                id=r[0],
                received_ms=r[1],
                topic=r[2],
                reason=r[3],
                detail=r[4],
                payload=bytes(r[5]).decode("utf-8", errors="replace"),
                payload_size=r[6],
            )
            for r in rows
        ]

    def counts(self) -> dict[str, int]:
        """Rows per reason."""
        with self._lock:
            rows = self._db.execute(
                "SELECT reason, COUNT(*) FROM dead_letter GROUP BY reason"
            ).fetchall()
        return {reason: n for reason, n in rows}

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()


class DeadLetterBuffer:
    """Rejections on their way to the store, committed in batches by one task.

    ``add`` never waits (the consumer's hot path is synchronous): past ``max_rows`` waiting rows
    it asks for an early commit. Memory is bounded because each row holds back its message's
    PUBACK, and the broker sends no more than its in-flight window unacknowledged.
    """

    def __init__(
        self,
        store: DeadLetterStore,
        on_commit: Callable[[int], None],
        interval_s: float = 0.25,
        max_rows: int = 2000,
        on_safe: Callable[[list[int]], None] | None = None,
    ) -> None:
        self._store = store
        self._on_commit = on_commit
        self._on_safe = on_safe  # told the ack tokens of committed rows
        self._interval_s = interval_s
        self._max_rows = max_rows
        self._rows: list[NewDeadLetter] = []
        self._committing = 0
        self._due = asyncio.Event()
        self._flushing = asyncio.Lock()
        self._closed = False

    @property
    def pending(self) -> int:
        """Rows not yet committed."""
        return len(self._rows) + self._committing

    def add(self, row: NewDeadLetter) -> None:
        """Queue a row; commit early once many are waiting."""
        self._rows.append(row)
        if len(self._rows) >= self._max_rows:
            self._due.set()

    async def run(self) -> None:
        """Commit waiting rows every ``interval_s`` (sooner when many); return once closed."""
        while not self._closed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._due.wait(), self._interval_s)
            self._due.clear()
            await self.flush()
        await self.flush()

    async def flush(self) -> bool:
        """Commit everything waiting now; whether all of it (and any commit under way) is in.

        Flushes take turns, so a caller that must know its rows are committed (the spool's
        replay, before it moves its position) is not told so while another flush still has them.
        """
        async with self._flushing:
            await self._flush()
            return not self._rows

    async def _flush(self) -> None:
        if not self._rows:
            return
        rows, self._rows = self._rows, []
        self._committing = len(rows)
        try:
            committed = await asyncio.to_thread(self._store.add_many, rows)
        except sqlite3.Error:
            # Keep the rows and try again next round; the service must not die on a full disk.
            log.exception("could not store %d dead letters; will retry", len(rows))
            self._rows[:0] = rows
            return
        finally:
            self._committing = 0
        self._on_commit(committed)
        if self._on_safe is not None:
            self._on_safe([r.token for r in rows if r.token is not None])

    def close(self) -> None:
        """Stop after one last flush."""
        self._closed = True
        self._due.set()
