"""The API's second walls: security headers on every answer, and an unreachable InfluxDB
answered as 503 in the error shape (it was a 500). Real stores; InfluxDB is a closed port."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest

from devices.kinds import Kind
from devices.registry import parse_registry
from ingest.alerts.store import AlertStore, sqlite_url
from ingest.api import series as series_module
from ingest.api.app import STRICT_CSP, create_app
from ingest.api.context import ApiContext
from ingest.api.influxql import SeriesQuery
from ingest.api.series import SeriesResult
from ingest.api.tokens import Role, TokenStore
from ingest.ops.processes import free_port
from ingest.settings import Settings
from ingest.sinks.deadletters import DeadLetterStore
from rules.loader import parse_rules
from tests.unit.smallcity import SMALL_AREAS, SMALL_DEVICES

# A second grid with a gate of its own, and a rule that names a device in each grid.
AREAS = [*SMALL_AREAS, {"id": "g2", "name": "网格二", "level": "grid", "parent": "v"}]
DEVICES = [*SMALL_DEVICES, {**SMALL_DEVICES[1], "id": "g9", "grid": "g2"}]
RULES = {
    "rules": [
        {
            "id": "gate_forced",
            "name": "Gate forced open",
            "name_zh": "门禁被强行打开",
            "type": "event",
            "events": ["forced_open"],
            "severity": "major",
            "kinds": ["gate"],
            "devices": ["g1", "g9"],
        }
    ]
}
WORKER: dict[str, str] = {}


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    registry = parse_registry({"areas": AREAS, "devices": DEVICES})
    tokens = TokenStore.load(tmp_path / "tokens.yaml")
    operator, _ = tokens.add("duty officer", Role.OPERATOR)
    WORKER["token"], _ = tokens.add("li.na", Role.GRID_WORKER, ["g"])
    async with aiohttp.ClientSession() as http:
        ctx = ApiContext(
            settings=Settings(data_dir=tmp_path, influx_url=f"http://127.0.0.1:{free_port()}"),
            registry=registry,
            rules=parse_rules(RULES, "<test>", registry),
            rules_path=tmp_path / "rules.yaml",
            alert_store=AlertStore(sqlite_url(tmp_path)),
            dead_letters=DeadLetterStore(tmp_path / "deadletters.sqlite"),
            tokens=tokens,
            http=http,
        )
        transport = httpx.ASGITransport(app=create_app(ctx))
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as c:
            yield c, operator


async def test_every_answer_carries_the_security_headers(
    client: tuple[httpx.AsyncClient, str],
) -> None:
    c, token = client
    for path, auth in (("/ui/", False), ("/ui/worker.html", False), ("/alerts", True)):
        headers = {"Authorization": f"Bearer {token}"} if auth else {}
        r = await c.get(path, headers=headers)
        assert r.status_code == 200, path
        assert r.headers["content-security-policy"] == STRICT_CSP, path
        assert "script-src 'self'" in STRICT_CSP and "frame-ancestors 'none'" in STRICT_CSP
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["referrer-policy"] == "no-referrer"
    docs = await c.get("/docs")  # Swagger UI starts with an inline script: no script policy
    assert docs.status_code == 200
    assert docs.headers["content-security-policy"] == "frame-ancestors 'none'"


async def test_the_front_door_leads_to_the_pages_and_docs_need_no_internet(
    client: tuple[httpx.AsyncClient, str],
) -> None:
    """Issue 15: ``/`` answered 404, and ``/docs`` loaded Swagger UI from a public CDN (a blank
    page on a city's intranet). Every asset the docs page names is served by us."""
    c, _ = client
    root = await c.get("/", follow_redirects=False)
    assert root.status_code == 307 and root.headers["location"] == "/ui/"
    html = (await c.get("/docs")).text
    assert "SwaggerUIBundle" in html and "/openapi.json" in html
    assert not re.findall(r"(?:src|href)=[\"']?https?://", html)
    assets = re.findall(r"(?:src|href)=[\"']?(/[^\"' >]+)", html)
    assert {a.rsplit(".", 1)[-1] for a in assets} == {"js", "css", "png"}
    for asset in assets:
        r = await c.get(asset)
        assert r.status_code == 200 and len(r.content) > 500, asset
    assert (await c.get("/redoc")).status_code == 404  # ReDoc would need a CDN: not offered


async def test_an_unreachable_influxdb_is_a_503_in_the_error_shape(
    client: tuple[httpx.AsyncClient, str],
) -> None:
    c, token = client
    auth = {"Authorization": f"Bearer {token}"}
    params = {
        "kind": "river",
        "field": "water_level_m",
        "device": "r1",
        "start": "2026-12-01T00:00:00Z",
        "end": "2026-12-01T01:00:00Z",
    }
    r = await c.get("/series", params=params, headers=auth)
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "influx_unavailable"
    d = await c.get("/devices/r1", headers=auth)
    assert d.status_code == 503 and d.json()["error"]["code"] == "influx_unavailable"


async def test_a_grid_worker_sees_rules_but_only_its_own_devices_in_them(
    client: tuple[httpx.AsyncClient, str],
) -> None:
    c, operator = client
    everything = (await c.get("/rules", headers={"Authorization": f"Bearer {operator}"})).json()
    assert everything[0]["devices"] == ["g1", "g9"]
    worker = {"Authorization": f"Bearer {WORKER['token']}"}
    seen = (await c.get("/rules", headers=worker)).json()
    assert [r["id"] for r in seen] == ["gate_forced"]
    assert seen[0]["devices"] == ["g1"]  # g9 stands in another grid


class _Answer:
    status = 200

    def __init__(self, text: str) -> None:
        self._text = text

    async def text(self) -> str:
        return self._text

    async def __aenter__(self) -> _Answer:
        return self

    async def __aexit__(self, *_: object) -> None:
        return None


class _Session:
    """Stands in for aiohttp's session: the point is where the answer is shaped."""

    def __init__(self, text: str) -> None:
        self._text = text

    def get(self, *_: object, **__: object) -> _Answer:
        return _Answer(self._text)


async def test_a_large_series_answer_is_shaped_off_the_event_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 13: 100,000 values were shaped on the loop that reads MQTT — measured ~1 s of
    pure Python (plus ~0.4 s of JSON) during which no message was read. Where it runs is
    what is tested; how long it takes is machine noise."""
    values = [[1_764_547_200_000 + i * 1000, 208.0] for i in range(100_000)]
    answer = {"results": [{"series": [{"name": "river", "columns": ["time", "water_level_m"]}]}]}
    answer["results"][0]["series"][0]["values"] = values  # type: ignore[index]
    loop_thread = threading.current_thread()
    shaped_in: list[threading.Thread] = []
    real = series_module.shape_result

    def spy(q: SeriesQuery, a: dict[str, Any]) -> SeriesResult:
        shaped_in.append(threading.current_thread())
        return real(q, a)

    monkeypatch.setattr(series_module, "shape_result", spy)
    q = SeriesQuery(
        kind=Kind.RIVER,
        fields=["water_level_m"],
        device="r1",
        start=datetime(2026, 12, 1, tzinfo=UTC),
        end=datetime(2026, 12, 2, tzinfo=UTC),
        limit=100_000,
    )
    result = await series_module.run_series(
        _Session(json.dumps(answer)),  # type: ignore[arg-type]
        "http://influx",
        "db",
        "SELECT",
        q,
    )
    assert shaped_in and shaped_in[0] is not loop_thread
    assert sum(len(s.points) for s in result.series) == 100_000
