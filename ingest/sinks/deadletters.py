"""The dead-letter store: rejected messages kept for operators to inspect.

By default a SQLite file in the data directory (``store_path``); with ``CITYSENSE_DATABASE_URL``
the ``dead_letter`` and ``pruned`` tables of the shared database, so every worker of a cluster
lists every worker's dead letters. SQLAlchemy Core with portable types, as the alert store.

Rows are written in batches from the pipeline's flush task through a worker thread, so a
long run of bad input costs one INSERT per batch, never a blocking call on the event loop.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel
from sqlalchemy import (
    BigInteger,
    Column,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Table,
    Text,
    bindparam,
    delete,
    func,
    select,
)
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from ingest.datadir import private_file
from ingest.settings import Settings
from ingest.transactions import WRITE, open_engine, serialise_writers

log = logging.getLogger(__name__)

# Enough of a payload to see what was wrong; an oversize one is not kept whole.
MAX_KEPT_BYTES = 4096

# The dead letters' own writers' turn on PostgreSQL (ingest/transactions.py): workers' inserts
# and prunes take turns with each other, never with the alert writers.
DEAD_LETTERS_LOCK = 0x44_45_41_44  # "DEAD"

metadata = MetaData()
# The names and columns of the SQLite file's schema before SQLAlchemy, so an existing
# deadletters.sqlite3 opens as it is (create_all skips tables that exist).
dead_letter = Table(
    "dead_letter",
    metadata,
    # BIGINT on PostgreSQL: ids only grow, and a junk flood prunes millions a day. INTEGER on
    # SQLite, where AUTOINCREMENT needs exactly that (and never reuses a pruned id).
    Column("id", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True),
    Column("received_ms", BigInteger, nullable=False),
    Column("topic", Text, nullable=False),
    Column("reason", Text, nullable=False),
    Column("detail", Text, nullable=False),
    Column("payload", LargeBinary, nullable=False),
    Column("payload_size", Integer, nullable=False),
    Index("dead_letter_reason", "reason", "id"),
    sqlite_autoincrement=True,
)
pruned = Table(
    "pruned",
    metadata,
    Column("reason", Text, primary_key=True),
    Column("rows", BigInteger, nullable=False),
)

# The write path's statements, built once: building them per batch cost more than running them.
_TOP = select(func.max(dead_letter.c.id))
_COUNTS = select(dead_letter.c.reason, func.count()).group_by(dead_letter.c.reason)
_PRUNE = delete(dead_letter).where(
    dead_letter.c.id.in_(
        select(dead_letter.c.id)
        .where(dead_letter.c.reason == bindparam("which"))
        .order_by(dead_letter.c.id)
        .limit(bindparam("excess"))
    )
)
_ADD_PRUNED = (
    pruned.update()
    .where(pruned.c.reason == bindparam("which"))
    .values(rows=pruned.c.rows + bindparam("excess"))
)
_FIRST_PRUNED = pruned.insert().values(reason=bindparam("which"), rows=bindparam("excess"))

# The only copy of data we acknowledged (InfluxDB refused it) or of a message we failed on:
# pruning these loses something, so each time it happens the log says so, loudly.
_PRECIOUS = frozenset({"write_rejected", "internal_error"})


def store_path(data_dir: Path) -> Path:
    """Where the dead-letter database lives in a data directory."""
    return data_dir / "deadletters.sqlite3"


def store_location(settings: Settings) -> Path | str:
    """``CITYSENSE_DATABASE_URL`` if set, else the data directory's file (created 0600)."""
    if settings.database_url is not None:
        return settings.database_url.get_secret_value()
    return private_file(store_path(settings.data_dir))


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


# The columns add_many writes, in the order of its rows (the id is the database's).
_INSERTED = ["received_ms", "topic", "reason", "detail", "payload", "payload_size"]
_Row = tuple[int, str, str, str, bytes, int]
# What a store last saw committed: the highest id, and the rows per reason then.
_Seen = tuple[int | None, dict[str, int]]


class DeadLetterStore:
    """Store of rejected messages, pruned to the newest ``max_rows`` per reason.

    Per reason, so a flood of junk from a hostile device (``invalid_json``, ``schema``, …)
    never pushes out the rows that matter — ``write_rejected`` above all. What is pruned is
    counted per reason in the same transaction (``pruned()``, and ``/metrics``).

    ``where`` is a SQLite file (the default, ``store_path``) or a SQLAlchemy URL (the shared
    database of a cluster's workers). Tables are created if missing.
    """

    def __init__(self, where: Path | str, max_rows: int = 100_000) -> None:
        if isinstance(where, Path):
            where.parent.mkdir(parents=True, exist_ok=True)
        self.path = where if isinstance(where, Path) else None
        self._max_rows = max_rows
        self._engine = open_engine(f"sqlite:///{where}" if isinstance(where, Path) else where)
        self._writer = self._engine.execution_options(**{WRITE: True})
        with self._writer.begin() as conn:  # in turn, so two workers may start together
            serialise_writers(conn, DEAD_LETTERS_LOCK)
            metadata.create_all(conn)
        self._seen: _Seen | None = None  # nothing seen yet: the first write counts
        self._insert_sql = dead_letter.insert().compile(
            dialect=self._engine.dialect, column_keys=_INSERTED
        )
        # Positional parameters follow the table's column order, which is the rows' order.
        assert self._insert_sql.positiontup in (None, _INSERTED)

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
        with self._writer.begin() as conn:
            # Pruning is correct with several writers (a cluster's workers on PostgreSQL)
            # because they take turns: a transaction counts, inserts and prunes with no other
            # writer in between (this turn on PostgreSQL, BEGIN IMMEDIATE on SQLite).
            serialise_writers(conn, DEAD_LETTERS_LOCK)
            before = self._counts_now(conn)
            self._insert(conn, values)
            counts, cut = self._prune(conn, before, [v[2] for v in values])
            top = conn.scalar(_TOP)
        self._seen = (top, counts)  # once committed: a failed transaction leaves the old view
        for reason, n in cut.items():
            say = log.error if reason in _PRECIOUS else log.info
            say(
                "dead letters: %d oldest %s rows pruned (cap %d per reason)",
                n,
                reason,
                self._max_rows,
            )
        return len(values)

    def _insert(self, conn: Connection, values: builtins.list[_Row]) -> None:
        """One executemany straight to the driver.

        SQLAlchemy's own executemany handles each row's parameters in Python, which cost more
        than SQLite's insert itself (add_many of 10,000 rows took half as long again).
        """
        compiled = self._insert_sql
        if compiled.positional:  # SQLite (qmark): the driver takes the tuples as they are
            conn.exec_driver_sql(str(compiled), values)
        else:  # psycopg (pyformat): by name
            conn.exec_driver_sql(
                str(compiled), [dict(zip(_INSERTED, v, strict=True)) for v in values]
            )

    def _counts_now(self, conn: Connection) -> dict[str, int]:
        """Rows per reason, inside a write transaction: from memory if no one else wrote since.

        Writers take turns and ids only grow, so an unchanged highest id means no other writer
        inserted (or pruned: it prunes only as it inserts) since this store's last commit; a
        lone writer (the default file) thus never scans the table, only reads one index end.
        """
        top = conn.scalar(_TOP)
        if self._seen is not None and self._seen[0] == top:
            return dict(self._seen[1])
        return {reason: n for reason, n in conn.execute(_COUNTS)}

    def _prune(
        self, conn: Connection, counts: dict[str, int], added: list[str]
    ) -> tuple[dict[str, int], dict[str, int]]:
        """Inside the insert's transaction: cut each reason to ``max_rows``; count the cut."""
        counts = dict(counts)
        for reason in added:
            counts[reason] = counts.get(reason, 0) + 1
        cut: dict[str, int] = {}
        for reason in sorted(set(added)):
            excess = counts[reason] - self._max_rows
            if excess <= 0:
                continue
            # The turn (or BEGIN IMMEDIATE) makes UPDATE-else-INSERT safe: no upsert needed.
            step = {"which": reason, "excess": excess}
            conn.execute(_PRUNE, step)
            if conn.execute(_ADD_PRUNED, step).rowcount == 0:
                conn.execute(_FIRST_PRUNED, step)
            counts[reason] -= excess
            cut[reason] = excess
        return counts, cut

    def pruned(self) -> dict[str, int]:
        """Rows pruned so far, per reason (kept across restarts)."""
        with self._engine.connect() as conn:
            return {reason: n for reason, n in conn.execute(select(pruned.c.reason, pruned.c.rows))}

    def list(self, *, reason: str | None = None, limit: int = 100) -> list[DeadLetter]:
        """Newest first, optionally of one reason."""
        query = select(dead_letter).order_by(dead_letter.c.id.desc()).limit(limit)
        if reason is not None:
            query = query.where(dead_letter.c.reason == reason)
        with self._engine.connect() as conn:
            rows = conn.execute(query).all()
        return [
            DeadLetter(
                id=r.id,
                received_ms=r.received_ms,
                topic=r.topic,
                reason=r.reason,
                detail=r.detail,
                payload=bytes(r.payload).decode("utf-8", errors="replace"),
                payload_size=r.payload_size,
            )
            for r in rows
        ]

    def counts(self) -> dict[str, int]:
        """Rows per reason."""
        with self._engine.connect() as conn:
            return {reason: n for reason, n in conn.execute(_COUNTS)}

    def close(self) -> None:
        """Release the database's connections."""
        self._engine.dispose()


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
        except (sqlite3.Error, SQLAlchemyError):
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
