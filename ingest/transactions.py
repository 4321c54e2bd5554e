"""Write transactions on the shared SQL database (alerts, engine state, leases): SQLite's
settings and the writers' turns on PostgreSQL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.pool import StaticPool

WRITE = "citysense_write"  # execution option: this transaction writes (BEGIN IMMEDIATE)
BUSY_TIMEOUT_MS = 10_000


def sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # SQLAlchemy, not the sqlite3 module, starts transactions (see sqlite_begin).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    # WAL: the CLI and the API read while the service writes; a busy writer is waited for.
    cursor.execute("PRAGMA journal_mode=WAL")
    # FULL: a PUBACK follows the commit, and the engine's state is in the same commit; with
    # NORMAL a power cut may roll back the last commits after their messages were acknowledged.
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    cursor.close()


# PostgreSQL: every writing transaction takes this lock first, so writers take turns as on
# SQLite (BEGIN IMMEDIATE). Without it, history rows commit out of the order of their ``seq``
# (a sequence hands numbers out at insert), and a reader that moved past a seq still
# committing would never see that row: a person's resolve the engine never hears (issue 14
# review, P4). It also rules out two writers opening the same alert between read and insert.
WRITERS_LOCK = 0x43_49_54_59  # "CITY"
# A writer never waits for the turn longer than this (then its transaction fails and is
# retried, as a busy SQLite file is); and a writer that stops moving inside its transaction
# (SIGSTOP, a partitioned network) loses it after IDLE_TIMEOUT_S: the server ends its session,
# which frees the turn, instead of every writer waiting for it without end. Short: a worker
# paused inside a transaction holds the rows of the partition leases it fences on (and the
# turn), so every other worker's beat waits for it — past the lease, the whole cluster would
# stop reading (issue 16 review). A live writer issues its statements back to back.
LOCK_TIMEOUT_S = 10
IDLE_TIMEOUT_S = 4
# A store round does its own work between statements (applying each transition in memory,
# composing each change's MQTT messages: ~0.1 ms together, measured): a round of tens of
# thousands of changes (a city-wide silence wave) would pass IDLE_TIMEOUT_S and be killed,
# then retried the same way for ever. Such a transaction is given this much more per item.
IDLE_PER_ITEM_S = 0.0002


def serialise_writers(
    conn: Connection, key: int = WRITERS_LOCK, lock_timeout_s: float = LOCK_TIMEOUT_S
) -> None:
    """Take the writers' turn ``key`` on PostgreSQL (released at commit or rollback); wait for
    it (and any row lock after it) at most ``lock_timeout_s``."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{round(lock_timeout_s * 1000)}ms'")
        conn.exec_driver_sql(f"SET LOCAL idle_in_transaction_session_timeout = '{IDLE_TIMEOUT_S}s'")
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})


def allow_idle(conn: Connection, items: int) -> None:
    """Let a transaction that works on ``items`` items between its statements stay idle that
    much longer than ``IDLE_TIMEOUT_S`` on PostgreSQL (until it ends)."""
    if conn.dialect.name == "postgresql" and items:
        ms = round((IDLE_TIMEOUT_S + items * IDLE_PER_ITEM_S) * 1000)
        conn.exec_driver_sql(f"SET LOCAL idle_in_transaction_session_timeout = '{ms}ms'")


def sqlite_begin(conn: Connection) -> None:
    # A writing transaction takes the write lock at BEGIN, so its reads cannot go stale before
    # its writes (a deferred transaction that upgrades fails at once with SQLITE_BUSY in WAL).
    if conn.get_execution_options().get(WRITE):
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    else:
        conn.exec_driver_sql("BEGIN")


def open_engine(url: str) -> Engine:
    """An engine on ``url``; on SQLite with the settings above (WAL, synchronous=FULL,
    BEGIN IMMEDIATE for writers), a file's directory made, an in-memory database shared by
    every thread. The alert store, leases, dead letters and tokens all open theirs here."""
    parsed = make_url(url)
    options: dict[str, Any] = {}
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database in ("", ":memory:"):
            options = {"poolclass": StaticPool, "connect_args": {"check_same_thread": False}}
        elif not database.startswith("file:"):
            Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, **options)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", sqlite_connect)
        event.listen(engine, "begin", sqlite_begin)
    return engine
