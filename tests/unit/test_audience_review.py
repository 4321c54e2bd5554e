"""What the attack review of issue 17 ("who answers for what") proved, kept as regression tests:
a device page leaking alerts not told to a department, a chief's alert lost behind newer
alerts of its area, NATS permissions on the wrong subject for dotted names, and a person
struck from the people file keeping access. Each failed on the code as reviewed."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from unittest.mock import MagicMock

import aiohttp
import httpx
import pytest
import yaml

from ingest.alerts.store import AlertStore, sqlite_url
from ingest.api.tokens import Role, TokenStore
from ingest.ops.processes import free_port
from ingest.people import Person
from ingest.settings import Settings
from ingest.sinks.deadletters import DeadLetterStore
from tests.unit.test_responsibility import REGISTRY, REPO, RULES, example_api, open_told, small

PERSONS = ["tang.weimin", "flood.sq", "eco.sq", "li.na"]


@pytest.fixture
async def city(
    tmp_path: Path,
) -> AsyncIterator[tuple[httpx.AsyncClient, dict[str, dict[str, str]], AlertStore]]:
    store = AlertStore(sqlite_url(tmp_path))
    tokens = TokenStore.load(tmp_path / "tokens.yaml")
    held = {n: {"Authorization": f"Bearer {tokens.add(n, Role.PERSON)[0]}"} for n in PERSONS}
    async with example_api(tmp_path, store, tokens) as c:
        yield c, held, store


async def test_device_detail_shows_a_department_alerts_not_told_to_it(
    city: tuple[httpx.AsyncClient, dict[str, dict[str, str]], AlertStore],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """GET /devices/{id} lists every open alert of a device in the caller's view areas, not
    only those ``sees_alert`` allows: ecology staff of county 430502 read the flood alert told
    to the flood HQ and the chiefs, which GET /alerts/{id} hides from them (404)."""
    c, held, store = city

    async def no_influx(*_: Any) -> dict[str, Any]:
        return {}

    monkeypatch.setattr("ingest.api.devices._last", no_influx)
    flood = open_told(store, "river_over_guarantee", "river-zj-0001", 1_000)
    assert "department/ecology_env/430502" not in flood.audiences
    direct = await c.get(f"/alerts/{flood.id}", headers=held["eco.sq"])
    assert direct.status_code == 404  # not theirs
    detail = await c.get("/devices/river-zj-0001", headers=held["eco.sq"])
    assert detail.status_code == 200
    leaked = [a["id"] for a in detail.json()["open_alerts"]]
    assert flood.id not in leaked, "the device page shows an alert not told to ecology"


async def test_a_chiefs_listing_loses_its_alert_behind_newer_alerts_of_its_area(
    city: tuple[httpx.AsyncClient, dict[str, dict[str, str]], AlertStore],
) -> None:
    """``_list`` reads the newest ``limit`` alerts of each post's area and only then keeps the
    ones told to the post: a county-level chief's alert is lost behind newer grid alerts of the
    county (with the default limit, behind 100 gate alerts)."""
    c, held, store = city
    flood = open_told(store, "river_over_guarantee", "river-zj-0001", 1_000)
    for i, rule_id in enumerate(("gate_forced_open", "gate_held_open", "gate_tailgating_burst")):
        open_told(store, rule_id, "gate-sq-0001", 2_000 + i)  # newer, same county, grid only
    answer = await c.get("/alerts", params={"limit": 2}, headers=held["tang.weimin"])
    assert answer.status_code == 200
    assert [a["id"] for a in answer.json()] == [flood.id]


def test_nats_permission_of_a_dotted_username_is_the_subject_nats_maps_it_to() -> None:
    """NATS maps a '.' of an MQTT topic to '//' (the module's own comment; nats-server #4243):
    ``cases/person/he.a`` is the subject ``cases.person.he//a``. ``_subject`` only swaps '/',
    so every person of the example file (all usernames have a '.') is granted a subject no one
    publishes on and cannot read their own cases on a NATS cluster. The same for segment,
    area and department ids with a '.' (all allowed by their patterns)."""
    from ingest.ops.nats import users_conf

    registry = small()
    person = Person(username="he.a", name="何", role="river_chief", segments=("s1",))
    text = users_conf(
        registry,
        [person],
        dev_secret="x" * 32,
        ingest_user="citysense",
        ingest_password="pw",
        partitions=1,
    )
    users = json.loads(text.split("authorization ", 1)[1])["users"]
    allowed = next(u for u in users if u["user"] == "he.a")["permissions"]["subscribe"]["allow"]
    assert "cases.person.he//a" in allowed, allowed


async def test_a_person_removed_from_the_people_file_keeps_api_access(tmp_path: Path) -> None:
    """The service reads the people file once (service.py ``_api_server``: ``load_people``);
    ``_as_person`` then checks that snapshot "at every request". A person struck from the file
    keeps their token's access (and their posts' alerts) until a restart; an open
    /alerts/stream keeps even that (it checks only token revocation)."""
    from ingest.service import _api_server

    people_file = tmp_path / "workers.yaml"
    text = (REPO / "config" / "workers.yaml").read_text(encoding="utf-8")
    people_file.write_text(text, encoding="utf-8")
    settings = Settings(
        data_dir=tmp_path,
        workers=people_file,
        api_port=0,
        influx_url=f"http://127.0.0.1:{free_port()}",
    )
    store = AlertStore(sqlite_url(tmp_path))
    alerting = MagicMock(state_problem=None, rules=RULES)
    async with aiohttp.ClientSession() as http:
        server = _api_server(
            settings,
            REGISTRY,
            alerting,
            store,
            DeadLetterStore(tmp_path / "deadletters.sqlite"),
            http,
            MagicMock(),
            MagicMock(),
            MagicMock(),
            MagicMock(),
            MagicMock(),
            None,
        )
        assert server is not None
        app = server._server.config.app
        server._socket.close()
        token = TokenStore.load(tmp_path / "tokens.yaml").add("li.na", Role.PERSON)[0]
        auth = {"Authorization": f"Bearer {token}"}
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as c:
            assert (await c.get("/alerts", headers=auth)).status_code == 200
            data = yaml.safe_load(text)
            data["workers"] = [w for w in data["workers"] if w["username"] != "li.na"]
            people_file.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
            await asyncio.sleep(1.1)  # the file is looked at no more than once a second
            still = await c.get("/alerts", headers=auth)
            assert still.status_code == 401, "li.na is no longer in the people file"
