"""API tokens in the shared database (issue 16: CITYSENSE_DATABASE_URL), on a SQLite file URL
and on a real PostgreSQL 15: a token added or revoked through one store (a worker, the CLI) is
seen by every other store on the database, re-read at most once per interval."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine

from ingest.api.tokens import Role, TokenStore
from ingest.api.tokentable import TableTokenStore, api_tokens
from ingest.cli import main
from tests.postgres import drop_database, new_database

REPO = Path(__file__).resolve().parents[2]
GRID = "430502001001-01"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty shared database: a SQLite file URL, or a database on the session's PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'shared.sqlite3'}"
        return
    fresh = new_database(request.getfixturevalue("postgres_url"), "tokens")
    yield fresh
    drop_database(fresh)


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_token_added_on_one_store_is_accepted_by_another_and_revoked_there(url: str) -> None:
    clock = Clock()
    worker = TableTokenStore(url, clock=clock)
    cli = TableTokenStore(url)
    token, principal = cli.add("李娜", Role.GRID_WORKER, [GRID])
    assert cli.verify(token) == principal  # the writer sees its own token at once
    assert worker.verify(token) is None and worker.reload_if_changed() is False  # not due
    clock.now += 1.0
    assert worker.reload_if_changed() is True
    assert worker.verify(token) == principal and worker.list() == [principal]
    clock.now += 1.0
    assert worker.reload_if_changed() is False  # due, but nothing changed

    assert cli.revoke(principal.token_id) is True
    assert cli.revoke(principal.token_id) is False and cli.revoke("0" * 12) is False
    clock.now += 1.0
    assert worker.reload_if_changed() is True
    assert worker.verify(token) is None and not worker.is_active(principal.token_id)
    fresh = TableTokenStore(url)
    assert fresh.list() == [] and fresh.verify(token) is None
    for store in (worker, cli, fresh):
        store.close()


def test_a_fresh_store_reads_every_token_oldest_first(url: str) -> None:
    a = TableTokenStore(url)
    first, p1 = a.add("one", Role.OPERATOR)
    second, p2 = a.add("two", Role.GRID_WORKER, [GRID, "430502001001"])
    b = TableTokenStore(url)
    assert b.list() == [p1, p2]
    assert b.verify(first) == p1 and b.verify(second) == p2
    assert b.verify(first[:-1] + ("A" if first[-1] != "A" else "B")) is None
    a.close()
    b.close()


def test_a_flood_of_bad_tokens_reads_the_table_at_most_once_per_interval(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    store = TableTokenStore(url, clock=clock)
    reads = 0
    read = store._read

    def counted() -> dict[str, object]:
        nonlocal reads
        reads += 1
        return read()  # type: ignore[return-value]

    monkeypatch.setattr(store, "_read", counted)
    bad = "cst_0123456789ab_" + "A" * 43
    for _ in range(5 * 256):  # what ingest/api/auth.py does for each request with a bad token
        clock.now += 1 / 256  # exact in binary: 5 s after 1280 requests
        if store.verify(bad) is None:
            store.reload_if_changed()
    assert reads == 5  # 5 s of requests: one read a second
    store.close()


def test_on_the_event_loop_a_reload_never_waits(url: str) -> None:
    """The alert stream calls reload_if_changed on the loop: the read goes to a thread."""
    clock = Clock()
    server = TableTokenStore(url, clock=clock)
    token, principal = TableTokenStore(url).add("ops", Role.OPERATOR)
    clock.now += 1.0

    async def on_loop() -> None:
        assert server.reload_if_changed() is False  # scheduled, not done here
        for _ in range(100):
            await asyncio.sleep(0.02)
            if server.verify(token) is not None:
                return

    asyncio.run(on_loop())
    assert server.verify(token) == principal
    server.close()


def test_an_invalid_row_is_refused_and_logged_once(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    store = TableTokenStore(url, clock=clock)
    token, principal = store.add("ops", Role.OPERATOR)
    engine = create_engine(url)
    with engine.begin() as conn:  # a hand-written row: a grid worker without areas
        conn.execute(
            api_tokens.insert().values(
                id="abcdef012345",
                name="li",
                role="grid_worker",
                areas=[],
                hash="b" * 64,
                created_ms=0,
            )
        )
    engine.dispose()
    caplog.set_level(logging.ERROR, logger="ingest.api.tokens")
    for _ in range(3):
        clock.now += 1.0
        store.reload_if_changed()
    assert store.list() == [principal] and store.verify(token) == principal
    assert len(caplog.records) == 1 and "abcdef012345" in caplog.records[0].getMessage()
    store.close()


def test_ids_of_revoked_tokens_are_never_drawn_again(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    drawn = iter(["012345678901", "012345678901", "000000000e10"])
    monkeypatch.setattr("ingest.api.tokens.secrets.token_hex", lambda n: next(drawn))
    store = TableTokenStore(url)
    _, p1 = store.add("one", Role.OPERATOR)
    assert store.revoke(p1.token_id)
    _, p2 = store.add("two", Role.OPERATOR)
    assert (p1.token_id, p2.token_id) == ("012345678901", "000000000e10")
    store.close()


def test_cli_uses_the_database_url(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CITYSENSE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("CITYSENSE_REGISTRY", str(REPO / "config" / "registry.yaml"))
    monkeypatch.delenv("CITYSENSE_API_TOKENS_FILE", raising=False)
    monkeypatch.setenv("CITYSENSE_DATABASE_URL", url)
    assert main(["tokens", "add", "--name", "li.na", "--role", "grid_worker", "--area", GRID]) == 0
    out, err = capsys.readouterr()
    token = out.strip()
    principal = TableTokenStore(url).verify(token)
    assert principal is not None and principal.areas == {GRID}
    assert "the database" in err and "shown only now" in err and token not in err
    assert not (tmp_path / "tokens.yaml").exists()
    assert TokenStore.load(tmp_path / "tokens.yaml").verify(token) is None

    assert main(["tokens", "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == [
        {"id": principal.token_id, "name": "li.na", "role": "grid_worker", "areas": [GRID]}
    ]
    assert main(["tokens", "revoke", principal.token_id]) == 0
    assert TableTokenStore(url).verify(token) is None
    assert main(["tokens", "revoke", principal.token_id]) == 1
    assert f"no token {principal.token_id} in the database" in capsys.readouterr().err
