"""The HTTP API on a real running service: real Mosquitto, InfluxDB 1.6 and the alert store,
with data published by paho and written through the ingest path. Nothing is mocked."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from devices.kinds import Level
from devices.registry import Registry, RiverDevice
from ingest.api.tokens import Role, TokenStore, tokens_path
from ingest.service import ServiceState
from ingest.settings import Settings
from rules.alerts import area_ids
from tests.integration.test_alerts_e2e import applied
from tests.integration.test_ingest_e2e import (
    first_of,
    make_settings,
    now_ms,
    publish,
    running_service,
    settle,
)
from tests.services import new_database

pytestmark = pytest.mark.integration
RULES_TEXT = (Path(__file__).resolve().parents[2] / "config" / "rules.yaml").read_text("utf-8")

# Minute-aligned, so 1 m windows hold known readings: 10 readings 6 s apart per minute, for
# 5 minutes, ending a few minutes ago.
BASE_MS = (now_ms() // 60_000 - 10) * 60_000


@dataclass
class Api:
    """A running service with its API, tokens for each role, and what was published."""

    state: ServiceState
    settings: Settings
    registry: Registry
    url: str
    operator: str
    worker: str  # bound to the grid of the first river station
    stranger: str  # bound to a grid with no device of the test's river, gate or road
    river: RiverDevice
    gate_alert_id: str
    levels: list[float]  # what the river reported, 6 s apart from BASE_MS


def river_levels(river: RiverDevice) -> list[float]:
    """Below warning, so the readings raise no alert; distinct per minute for the means."""
    return [
        river.normal_level_m + minute * 0.1 + i * 0.01 for minute in range(5) for i in range(10)
    ]


@pytest.fixture(scope="module")
async def api(
    tmp_path_factory: pytest.TempPathFactory, mosquitto: Any, influxdb: Any, registry: Registry
) -> AsyncIterator[Api]:
    tmp: Path = tmp_path_factory.mktemp("api")
    settings = make_settings(
        tmp,
        mosquitto.port,
        influx_url=influxdb.url,
        influx_database=new_database(influxdb.url, "api"),
    )
    river = registry.devices[first_of(registry, "river")]
    assert isinstance(river, RiverDevice)
    gate = registry.devices[first_of(registry, "gate")]
    own = {d.grid for d in (river, gate)}
    elsewhere = next(g for g in (d.grid for d in registry.devices.values()) if g not in own)
    tokens = TokenStore.load(tokens_path(settings))
    operator, _ = tokens.add("duty officer", Role.OPERATOR)
    worker, _ = tokens.add("li.na", Role.GRID_WORKER, [river.grid, gate.grid])
    stranger, _ = tokens.add("wang.wei", Role.GRID_WORKER, [elsewhere])
    levels = river_levels(river)
    messages = [
        (
            f"iot/river/{river.id}/telemetry",
            json.dumps({"ts": BASE_MS + i * 6000, "seq": i, "water_level_m": level}).encode(),
        )
        for i, level in enumerate(levels)
    ]
    forced = {"ts": now_ms() - 5000, "seq": 1, "event": "forced_open"}
    messages.append((f"iot/gate/{gate.id}/event", json.dumps(forced).encode()))
    messages.append((f"iot/river/{river.id}/telemetry", b"{not json"))
    async with running_service(settings, registry) as state:
        await asyncio.to_thread(publish, mosquitto.port, messages)
        await settle(state, len(messages))
        await applied(state, 1)
        assert state.api_url is not None
        async with httpx.AsyncClient(base_url=state.api_url) as client:
            listed = await client.get("/alerts", headers=bearer(operator))
            gate_alert = next(a for a in listed.json() if a["device_id"] == gate.id)
        yield Api(
            state,
            settings,
            registry,
            state.api_url,
            operator,
            worker,
            stranger,
            river,
            gate_alert["id"],
            levels,
        )


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
async def client(api: Api) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=api.url, timeout=10) as c:
        yield c


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat()


# --- auth and errors -------------------------------------------------------------------------


async def test_health_is_open_and_everything_else_needs_a_token(
    api: Api, client: httpx.AsyncClient
) -> None:
    assert (await client.get("/health")).json() == {"status": "ok"}
    for path in ("/ready", "/metrics", "/devices", "/alerts", "/rules", "/deadletters"):
        for headers in ({}, bearer("cst_000000000000_" + "x" * 43), {"Authorization": "Basic x"}):
            answer = await client.get(path, headers=headers)
            assert answer.status_code == 401, (path, headers)
            assert answer.json()["error"]["code"] == "unauthorized"
            assert answer.headers["www-authenticate"] == "Bearer"


async def test_errors_have_one_shape_and_no_traces(api: Api, client: httpx.AsyncClient) -> None:
    op = bearer(api.operator)
    for answer in (
        await client.get("/nowhere", headers=op),
        await client.get("/alerts?limit=0", headers=op),
        await client.get("/alerts/A-000000000000", headers=op),
        await client.post("/alerts/A-000000000000/ack", headers=op),
    ):
        body = answer.json()
        assert set(body) == {"error"} and {"code", "message"} <= set(body["error"])
        assert "Traceback" not in answer.text
    assert answer.status_code == 404


async def test_ready_and_metrics(api: Api, client: httpx.AsyncClient) -> None:
    ready = await client.get("/ready", headers=bearer(api.operator))
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == {
        "broker": True,
        "influxdb": True,
        "alert_store": True,
        "spool": True,
    }
    metrics = (await client.get("/metrics", headers=bearer(api.operator))).text
    received = api.state.ledger.received
    assert f"citysense_messages_received_total {received}.0" in metrics
    assert 'citysense_messages_rejected_total{reason="invalid_json"} 1.0' in metrics
    assert 'citysense_alerts{state="open"} 1.0' in metrics
    assert "citysense_write_seconds_bucket" in metrics and "citysense_batch_points_count" in metrics
    assert "citysense_rule_evaluation_seconds_total" in metrics
    # Operators only: a grid worker is told the path does not exist.
    assert (await client.get("/metrics", headers=bearer(api.worker))).status_code == 404


# --- devices ---------------------------------------------------------------------------------


async def test_devices_are_filtered_to_what_the_caller_may_see(
    api: Api, client: httpx.AsyncClient
) -> None:
    everything = (await client.get("/devices", headers=bearer(api.operator))).json()
    assert len(everything) == len(api.registry.devices)
    mine = (await client.get("/devices", headers=bearer(api.worker))).json()
    own_grids = {api.river.grid, api.registry.devices[first_of(api.registry, "gate")].grid}
    assert {d["device"]["grid"] for d in mine} == own_grids
    assert len(mine) == sum(1 for d in api.registry.devices.values() if d.grid in own_grids)
    county = area_ids(api.registry.device_path(api.river.id))[Level.COUNTY]
    rivers = (
        await client.get(f"/devices?kind=river&area={county}", headers=bearer(api.operator))
    ).json()
    assert rivers and all(d["device"]["kind"] == "river" for d in rivers)
    assert all(county in [p["id"] for p in d["path"]] for d in rivers)


async def test_one_device_with_last_values_and_open_alerts(
    api: Api, client: httpx.AsyncClient
) -> None:
    detail = (await client.get(f"/devices/{api.river.id}", headers=bearer(api.worker))).json()
    last = detail["last"]["telemetry"]
    assert last["time_ms"] == BASE_MS + (len(api.levels) - 1) * 6000
    assert last["values"]["water_level_m"] == pytest.approx(api.levels[-1])
    assert last["units"]["water_level_m"] == "m"
    assert detail["last_seen_ms"] == last["time_ms"]
    assert detail["device"]["warning_level_m"] == api.river.warning_level_m
    gate = first_of(api.registry, "gate")
    gate_detail = (await client.get(f"/devices/{gate}", headers=bearer(api.operator))).json()
    assert [a["id"] for a in gate_detail["open_alerts"]] == [api.gate_alert_id]
    # Another area's device does not exist for the stranger; neither does a made-up one.
    hidden = await client.get(f"/devices/{api.river.id}", headers=bearer(api.stranger))
    missing = await client.get("/devices/no-such-device", headers=bearer(api.stranger))
    assert hidden.status_code == missing.status_code == 404
    assert hidden.json()["error"]["code"] == missing.json()["error"]["code"] == "not_found"


# --- time series -----------------------------------------------------------------------------


async def test_series_of_a_device_raw_and_aggregated_match_what_was_published(
    api: Api, client: httpx.AsyncClient
) -> None:
    window = {"start": iso(BASE_MS), "end": iso(BASE_MS + 5 * 60_000)}
    params = {"kind": "river", "field": "water_level_m", "device": api.river.id, **window}
    raw = await client.get("/series", params=params, headers=bearer(api.worker))
    assert raw.status_code == 200, raw.text
    body = raw.json()
    assert body["fields"] == [{"name": "water_level_m", "unit": "m"}]
    points = body["series"][0]["points"]
    assert [p["values"]["water_level_m"] for p in points] == pytest.approx(api.levels)
    means = await client.get(
        "/series", params={**params, "every": "1m", "fn": "mean"}, headers=bearer(api.worker)
    )
    windows = means.json()["series"][0]["points"]
    assert [p["time"] for p in windows] == [
        iso(BASE_MS + m * 60_000)[:19] + ".000Z" for m in range(5)
    ]
    expected = [sum(api.levels[m * 10 : m * 10 + 10]) / 10 for m in range(5)]
    assert [p["values"]["water_level_m"] for p in windows] == pytest.approx(expected)
    csv = await client.get(
        "/series", params={**params, "format": "csv"}, headers=bearer(api.worker)
    )
    assert csv.headers["content-type"].startswith("text/csv")
    lines = csv.text.strip().splitlines()
    assert len(lines) == 1 + len(api.levels) and "water_level_m" in lines[0]


async def test_series_of_an_area_and_of_someone_elses_device(
    api: Api, client: httpx.AsyncClient
) -> None:
    window = {"start": iso(BASE_MS), "end": iso(BASE_MS + 5 * 60_000)}
    params = {"kind": "river", "field": "water_level_m", "area": api.river.grid, **window}
    area = await client.get(
        "/series", params={**params, "every": "5m", "fn": "max"}, headers=bearer(api.worker)
    )
    assert area.status_code == 200, area.text
    [series] = area.json()["series"]  # the whole grid in one block
    maxima = [p["values"]["water_level_m"] for p in series["points"]]
    # 5-minute windows on the epoch: the readings span one or two of them.
    assert 1 <= len(maxima) <= 2
    assert max(m for m in maxima if m is not None) == pytest.approx(max(api.levels))
    for who in (api.stranger,):
        hidden = await client.get("/series", params=params, headers=bearer(who))
        assert hidden.status_code == 404


HOSTILE = [
    "'",
    '"',
    "x' OR 1=1 --",
    '"; DROP DATABASE citysense; --',
    "water_level_m; DROP MEASUREMENT river",
    "SELECT * FROM river",
    "/.*/",
    ".*",
    "river-zj-0001' OR device =~ /.*/",
    "a" * 5000,
    "水位",
    "\u202eevil",
    "\x00",
    "\n",
    "$(reboot)",
    "../../etc/passwd",
]


@pytest.mark.parametrize("param", ["field", "device", "area", "kind", "every", "fn", "start"])
async def test_hostile_series_parameters_get_4xx_and_nothing_else(
    api: Api, client: httpx.AsyncClient, param: str
) -> None:
    base = {
        "kind": "river",
        "field": "water_level_m",
        "device": api.river.id,
        "start": iso(BASE_MS),
        "end": iso(BASE_MS + 60_000),
    }
    for value in HOSTILE:
        params = {**base, param: value}
        if param == "area":
            params.pop("device")
        answer = await client.get("/series", params=params, headers=bearer(api.operator))
        assert 400 <= answer.status_code < 500, (param, value, answer.status_code, answer.text)
        assert answer.json()["error"]["code"]


async def test_range_and_row_limits_are_clear_4xx(api: Api, client: httpx.AsyncClient) -> None:
    base = {"kind": "river", "field": "water_level_m", "device": api.river.id}
    too_long = await client.get(
        "/series",
        params={**base, "start": "2024-01-01T00:00:00Z", "end": "2024-06-01T00:00:00Z"},
        headers=bearer(api.operator),
    )
    assert too_long.status_code == 400 and too_long.json()["error"]["code"] == "range_too_long"


# --- alerts ----------------------------------------------------------------------------------


async def test_a_grid_worker_reads_and_acts_only_on_its_own_alerts(
    api: Api, client: httpx.AsyncClient
) -> None:
    alert_id = api.gate_alert_id
    assert [a["id"] for a in (await client.get("/alerts", headers=bearer(api.worker))).json()] == [
        alert_id
    ]
    assert (await client.get("/alerts", headers=bearer(api.stranger))).json() == []
    for request in (
        client.get(f"/alerts/{alert_id}", headers=bearer(api.stranger)),
        client.post(f"/alerts/{alert_id}/ack", headers=bearer(api.stranger)),
        client.post(f"/alerts/{alert_id}/resolve", headers=bearer(api.stranger)),
    ):
        answer = await request
        assert answer.status_code == 404 and answer.json()["error"]["code"] == "not_found"
    detail = (await client.get(f"/alerts/{alert_id}", headers=bearer(api.worker))).json()
    assert detail["alert"]["state"] == "open"
    assert [e["action"] for e in detail["history"]] == ["opened"]


async def test_acknowledge_then_resolve_with_actor_and_note(
    api: Api, client: httpx.AsyncClient
) -> None:
    gate = api.registry.devices[first_of(api.registry, "gate")]
    # An alert of its own, so the order of tests does not matter.
    event = {"ts": now_ms() - 1000, "seq": 7, "event": "tailgating"}
    rule_alerts = [
        (
            f"iot/gate/{gate.id}/event",
            json.dumps({**event, "seq": 7 + i, "ts": event["ts"] + i}).encode(),
        )
        for i in range(5)
    ]
    before = api.state.alerting.changes if api.state.alerting else 0
    await asyncio.to_thread(publish, api.settings.mqtt_port, rule_alerts)
    await applied(api.state, before + 1)
    listed = (
        await client.get("/alerts?rule=gate_tailgating_burst", headers=bearer(api.worker))
    ).json()
    assert len(listed) == 1
    alert_id = listed[0]["id"]
    ack = await client.post(
        f"/alerts/{alert_id}/ack", json={"note": "on my way"}, headers=bearer(api.worker)
    )
    assert ack.status_code == 200, ack.text
    assert ack.json()["alert"]["state"] == "acknowledged"
    assert ack.json()["alert"]["acknowledged_by"] == "li.na"
    again = await client.post(f"/alerts/{alert_id}/ack", headers=bearer(api.worker))
    assert again.status_code == 409 and again.json()["error"]["code"] == "invalid_transition"
    done = await client.post(f"/alerts/{alert_id}/resolve", headers=bearer(api.operator))
    assert done.json()["alert"]["state"] == "resolved"
    assert done.json()["alert"]["resolved_by"] == "duty officer"
    history = (await client.get(f"/alerts/{alert_id}", headers=bearer(api.worker))).json()
    actions = [(e["action"], e["actor"]) for e in history["history"]]
    assert actions[-2:] == [("acknowledged", "li.na"), ("resolved", "duty officer")]
    resolved = (await client.get("/alerts?state=resolved", headers=bearer(api.worker))).json()
    assert alert_id in [a["id"] for a in resolved]


async def test_the_live_stream_delivers_a_new_alert_only_to_those_who_may_see_it(
    api: Api, client: httpx.AsyncClient
) -> None:
    road = api.registry.devices[first_of(api.registry, "road")]
    watcher_token, _ = TokenStore.load(tokens_path(api.settings)).add(
        "road.watcher", Role.GRID_WORKER, [road.grid]
    )
    await asyncio.sleep(1.1)  # the API re-reads the tokens file at most once a second

    async def first_alert(token: str, seconds: float) -> dict[str, Any] | None:
        try:
            async with (
                asyncio.timeout(seconds),
                client.stream("GET", "/alerts/stream", headers=bearer(token)) as stream,
            ):
                assert stream.headers["content-type"].startswith("text/event-stream")
                async for line in stream.aiter_lines():
                    if line.startswith("data: "):
                        found: dict[str, Any] = json.loads(line[6:])
                        return found
        except TimeoutError:
            return None
        return None

    watching = asyncio.create_task(first_alert(watcher_token, 10))
    elsewhere = asyncio.create_task(first_alert(api.stranger, 4))
    await asyncio.sleep(0.5)  # both streams are open
    accident = {"ts": now_ms() - 500, "seq": 99, "event": "accident"}
    await asyncio.to_thread(
        publish,
        api.settings.mqtt_port,
        [(f"iot/road/{road.id}/event", json.dumps(accident).encode())],
    )
    got = await watching
    assert got is not None and got["alert"]["device_id"] == road.id
    assert got["alert"]["rule_id"] == "road_accident" and got["event"]["action"] == "opened"
    assert "Road accident" in got["message_en"] or "accident" in got["message_en"].lower()
    assert await elsewhere is None  # the stranger's stream stayed quiet


async def test_a_revoked_tokens_open_stream_ends_and_streams_are_capped(
    api: Api, client: httpx.AsyncClient
) -> None:
    """Issue 13: a revoked token's open stream kept streaming; streams per token were
    unlimited."""
    store = TokenStore.load(tokens_path(api.settings))
    token, principal = store.add("short.lived", Role.GRID_WORKER, [api.river.grid])
    await asyncio.sleep(1.1)  # the API re-reads the tokens file at most once a second
    cap = api.settings.api_streams_per_token

    async def read_until_end(stream: httpx.Response) -> list[str]:
        return [line async for line in stream.aiter_lines()]

    async with contextlib.AsyncExitStack() as open_streams:
        streams = [
            await open_streams.enter_async_context(
                client.stream("GET", "/alerts/stream", headers=bearer(token))
            )
            for _ in range(cap)
        ]
        assert all(s.status_code == 200 for s in streams)
        over = await client.get("/alerts/stream", headers=bearer(token))
        assert over.status_code == 429 and over.json()["error"]["code"] == "too_many_streams"
        assert store.revoke(principal.token_id)
        async with asyncio.timeout(8):  # RECHECK_S is 2 s, plus the reload
            lines = await read_until_end(streams[0])
        assert "event: revoked" in lines


# --- rules and dead letters ------------------------------------------------------------------


async def test_rules_list_and_validate(api: Api, client: httpx.AsyncClient) -> None:
    rules = (await client.get("/rules", headers=bearer(api.worker))).json()
    assert "river_over_warning" in [r["id"] for r in rules]
    good = RULES_TEXT
    verdict = await client.post(
        "/rules/validate",
        content=good.encode(),
        headers={**bearer(api.operator), "Content-Type": "application/yaml"},
    )
    assert verdict.status_code == 200, verdict.text
    assert verdict.json() == {"valid": True, "rules": len(rules), "problems": []}
    bad = good.replace("attribute: warning_level_m", "attribute: no_such_attribute", 1)
    verdict = (
        await client.post(
            "/rules/validate",
            content=bad.encode(),
            headers={**bearer(api.operator), "Content-Type": "application/yaml"},
        )
    ).json()
    assert verdict["valid"] is False
    assert any("river_over_warning" in p["entry"] for p in verdict["problems"])
    broken = await client.post(
        "/rules/validate",
        content=b"rules: [",
        headers={**bearer(api.operator), "Content-Type": "application/yaml"},
    )
    assert broken.json()["valid"] is False and broken.json()["problems"][0]["field"] == "(yaml)"


async def test_dead_letters_with_counts(api: Api, client: httpx.AsyncClient) -> None:
    body = (await client.get("/deadletters", headers=bearer(api.operator))).json()
    assert body["counts"].get("invalid_json") == 1
    assert body["items"][0]["reason"] == "invalid_json"
    assert body["items"][0]["payload"] == "{not json"
    assert (await client.get("/deadletters", headers=bearer(api.worker))).status_code == 404


async def test_openapi_documents_every_route(api: Api, client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    paths = set(spec["paths"])
    assert {
        "/health",
        "/ready",
        "/metrics",
        "/devices",
        "/devices/{device_id}",
        "/series",
        "/alerts",
        "/alerts/{alert_id}",
        "/alerts/{alert_id}/ack",
        "/alerts/{alert_id}/resolve",
        "/alerts/stream",
        "/rules",
        "/rules/validate",
        "/deadletters",
    } <= paths
    assert (await client.get("/docs")).status_code == 200
