"""A real PostgreSQL 15 for the tests of the alert store (issue 16: PostgreSQL is tested in
``make test``, not only by hand).

``postgres_url`` starts one throwaway server for the session (``start_postgres``, on a free
port, from an empty directory) and yields the SQLAlchemy URL of its empty database
``citysense``. A test that writes takes a database of its own from ``new_database`` and drops
it with ``drop_database``, so tests stay independent and may run in any order.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from sqlalchemy.engine import make_url

from ingest.ops.processes import MissingBinaryError, free_port, start_postgres


def _admin(url: str) -> psycopg.Connection[tuple[object, ...]]:
    """An autocommit connection to the server of ``url`` (CREATE/DROP DATABASE need one)."""
    u = make_url(url)
    return psycopg.connect(
        host=u.host, port=u.port, user=u.username, dbname="postgres", autocommit=True
    )


def new_database(url: str, prefix: str = "t") -> str:
    """Create a database of a fresh name on the server of ``url``; return its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with _admin(url) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return make_url(url).set(database=name).render_as_string(hide_password=False)


def drop_database(url: str) -> None:
    """Drop the database of ``url``, ending any session still on it."""
    name = make_url(url).database or ""
    with _admin(url) as conn:
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """PostgreSQL 15 on a free port with an empty database ``citysense``: its SQLAlchemy URL
    (``postgresql+psycopg://postgres@127.0.0.1:PORT/citysense``, trust authentication)."""
    # Not under pytest's temporary directory: as root the server runs as user ``postgres``,
    # which may not enter root's 0700 /tmp/pytest-of-root; a directory in /tmp it can own.
    instance = Path(tempfile.mkdtemp(prefix="citysense-postgres-"))
    try:
        try:
            proc = start_postgres(free_port(), instance)
        except MissingBinaryError as e:
            pytest.fail(f"{e}. Run `make test`, which installs it first.", pytrace=False)
        try:
            yield f"postgresql+psycopg://postgres@{proc.address}/citysense"
        finally:
            # SIGINT: a fast shutdown, which ends sessions a failed test left open; stop()'s
            # SIGTERM alone would wait for them.
            if proc.alive():
                os.kill(proc.pid, signal.SIGINT)
            proc.stop()
    finally:
        shutil.rmtree(instance, ignore_errors=True)
