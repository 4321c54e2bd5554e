"""Issue 13 item 13, the API's half: a person's ack or resolve writes its MQTT messages into
the alert store's outbox in the ack's own transaction.

A unit test (real store, the API in process): what it shows is an ordering inside one
process — the rows are committed with the change, before anything else runs — which a kill
on the real stack could only hit by luck. The broker side is in
tests/integration/test_alert_outbox.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import httpx
import pytest

from devices.kinds import Level
from ingest.alerts.store import AlertStore, sqlite_url
from ingest.api.app import create_app
from ingest.api.context import ApiContext
from ingest.api.tokens import Role, TokenStore
from ingest.ops.processes import free_port
from ingest.settings import Settings
from ingest.sinks.deadletters import DeadLetterStore
from rules.alerts import Alert, AlertEvent, AlertState
from rules.loader import parse_rules
from tests.unit.test_alert_store import REGISTRY, fire
from tests.unit.test_alerting_trust import WARNING

RULES = {"rules": [WARNING]}


def messages(changes: Sequence[tuple[Alert, AlertEvent]]) -> list[tuple[str, bytes]]:
    """Stands in for Alerting.announcements: one message per change, naming it."""
    return [
        (f"alerts/grid/{a.areas[Level.GRID]}", f"{a.id} {e.action}".encode()) for a, e in changes
    ]


def refuse(changes: Sequence[tuple[Alert, AlertEvent]]) -> list[tuple[str, bytes]]:
    raise RuntimeError("disk full while writing the outbox")


@dataclass
class Api:
    client: httpx.AsyncClient
    ctx: ApiContext
    token: str


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    tokens = TokenStore.load(tmp_path / "tokens.yaml")
    operator, _ = tokens.add("duty officer", Role.OPERATOR)
    store = AlertStore(sqlite_url(tmp_path))
    async with aiohttp.ClientSession() as http:
        ctx = ApiContext(
            settings=Settings(data_dir=tmp_path, influx_url=f"http://127.0.0.1:{free_port()}"),
            registry=REGISTRY,
            rules=parse_rules(RULES, "<test>", REGISTRY),
            rules_path=tmp_path / "rules.yaml",
            alert_store=store,
            dead_letters=DeadLetterStore(tmp_path / "deadletters.sqlite"),
            tokens=tokens,
            http=http,
            announce=None,  # nothing after the commit runs: as if killed right after it
            announcements=messages,
        )
        transport = httpx.ASGITransport(app=create_app(ctx))
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as c:
            yield Api(c, ctx, operator)
    store.close()


async def test_an_ack_and_its_message_are_one_commit(api: Api) -> None:
    store = api.ctx.alert_store
    alert, _ = fire(store)
    auth = {"Authorization": f"Bearer {api.token}"}
    # Nothing runs after the commit: the message is in the outbox all the same.
    r = await api.client.post(f"/alerts/{alert.id}/ack", headers=auth)
    assert r.status_code == 200, r.text
    assert store.pending_announcements() == [
        (1, "alerts/grid/g1", f"{alert.id} acknowledged".encode())
    ]
    got = store.get(alert.id)
    assert got is not None and got.state is AlertState.ACKNOWLEDGED

    # Writing the message fails: the resolve is not committed either.
    api.ctx.announcements = refuse
    with pytest.raises(RuntimeError, match="disk full"):
        await api.client.post(f"/alerts/{alert.id}/resolve", headers=auth)
    got = store.get(alert.id)
    assert got is not None and got.state is AlertState.ACKNOWLEDGED
    assert store.count_announcements() == 1


async def test_a_token_named_auto_cannot_resolve(api: Api) -> None:
    """Issue 14 review F4: ``auto`` marks the rules' own resolves, which the engine does not
    listen for; a person's resolve under that name would leave the engine holding a condition
    the store has closed. ``tokens add`` refuses the name; a file edited by hand may still
    hold it, and then the step is refused with a named error, nothing stored or sent."""
    store = api.ctx.alert_store
    alert, _ = fire(store)
    with pytest.raises(ValueError, match="reserved"):
        api.ctx.tokens.add("Auto", Role.OPERATOR)
    path = api.ctx.tokens.path
    path.write_text(path.read_text(encoding="utf-8").replace("duty officer", "auto"))
    assert api.ctx.tokens.reload_if_changed()
    auth = {"Authorization": f"Bearer {api.token}"}
    for action in ("ack", "resolve"):
        r = await api.client.post(f"/alerts/{alert.id}/{action}", headers=auth)
        assert r.status_code == 422, r.text
        assert r.json()["error"]["code"] == "reserved_actor"
    got = store.get(alert.id)
    assert got is not None and got.state is AlertState.OPEN
    assert store.count_announcements() == 0
