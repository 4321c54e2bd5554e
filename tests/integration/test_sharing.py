"""Sharing with departments on the real API and a real InfluxDB 1.6 (issue 19): department tokens
read what config/sharing.yaml shares with them — river series unconditionally, road events under
a grant and without the plate hashes, gate events never, nothing on an expired grant — and every
read is in the access audit with its count, which only operators may list."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
import yaml

from devices.kinds import Channel, Kind
from devices.payloads import DeviceMessage, GateEvent, RiverTelemetry, RoadEvent
from devices.registry import Registry
from ingest.alerts.store import AlertStore, sqlite_url
from ingest.api.app import create_app
from ingest.api.context import ApiContext
from ingest.api.tokens import Role, TokenStore
from ingest.intake.decode import Decoded
from ingest.intake.lineprotocol import LineEncoder
from ingest.ops.processes import ManagedProcess
from ingest.settings import Settings
from ingest.sinks.deadletters import DeadLetterStore
from rules.loader import parse_rules
from tests.services import influx_query, new_database

pytestmark = pytest.mark.integration

START = datetime(2026, 11, 20, tzinfo=UTC)
RIVER = "river-zj-0001"  # county 430502
RIVER_POINTS = 12
ROAD = "road-sq-0001"  # county 430502
ROAD_EVENTS = 5
GATE = "gate-sq-0001"
SHARING: dict[str, Any] = {
    "data_sets": {
        "river": {"class": "unconditional"},
        "road": {"class": "unconditional"},
        "gate": {"class": "conditional"},
        "road_events": {"class": "conditional", "fields": ["speed_kmh", "lane", "confidence"]},
        "gate_events": {"class": "not_shared"},
        "alerts": {"class": "not_shared"},
    },
    "grants": [
        {
            "id": "SY-GX-test-1",
            "department": "traffic_police",
            "data_sets": ["road_events"],
            "areas": ["430502"],
            "approved_by": "数据局",
            "expires": "2099-12-31",
        },
        {
            "id": "SY-GX-test-2",
            "department": "ecology_env",
            "data_sets": ["road_events"],
            "areas": ["430502"],
            "approved_by": "数据局",
            "expires": "2020-01-01",  # long past
        },
    ],
}


@dataclass
class Api:
    client: httpx.AsyncClient
    operator: str
    ecology: str  # ecology_env: river unconditionally; its road_events grant has expired
    police: str  # traffic_police: road_events under a valid grant


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def _lines(registry: Registry) -> list[str]:
    encoder = LineEncoder(registry, hash_plate=lambda plate: f"h-{plate}")
    out = []
    written: list[tuple[Kind, Channel, str, DeviceMessage]] = []
    for i in range(RIVER_POINTS):
        at = _ms(START + timedelta(minutes=i))
        written.append(
            (Kind.RIVER, Channel.TELEMETRY, RIVER, RiverTelemetry(ts=at, seq=i, water_level_m=2.5))
        )
    for i in range(ROAD_EVENTS):
        at = _ms(START + timedelta(minutes=i))
        event = RoadEvent(ts=at, seq=i, event="speeding", speed_kmh=99.5, lane=2, plate="湘E12345")
        written.append((Kind.ROAD, Channel.EVENT, ROAD, event))
        gate = GateEvent(ts=at, seq=i, event="forced_open", plate="湘E54321")
        written.append((Kind.GATE, Channel.EVENT, GATE, gate))
    for kind, channel, device, message in written:
        assert message.ts is not None
        decoded = Decoded(kind, channel, registry.devices[device], message, message.ts)
        out.append(encoder.encode(decoded))
    return out


@pytest.fixture(scope="module")
async def api(
    influxdb: ManagedProcess, registry: Registry, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Api]:
    for device in (RIVER, ROAD, GATE):
        assert registry.device_path(device).areas[-2].id == "430502"
    database = new_database(influxdb.url, "sharing")
    tmp: Path = tmp_path_factory.mktemp("sharing")
    (tmp / "sharing.yaml").write_text(yaml.safe_dump(SHARING, allow_unicode=True))
    tokens = TokenStore.load(tmp / "tokens.yaml")
    operator, _ = tokens.add("duty officer", Role.OPERATOR)
    ecology, _ = tokens.add("ecology_env", Role.DEPARTMENT)
    police, _ = tokens.add("traffic_police", Role.DEPARTMENT)
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{influxdb.url}/write",
            params={"db": database, "precision": "ms"},
            data="\n".join(_lines(registry)).encode(),
        ) as resp:
            assert resp.status == 204, await resp.text()
        ctx = ApiContext(
            settings=Settings(
                data_dir=tmp,
                influx_url=influxdb.url,
                influx_database=database,
                sharing=tmp / "sharing.yaml",
            ),
            registry=registry,
            rules=parse_rules({"rules": []}, "<test>", registry),
            rules_path=tmp / "rules.yaml",
            alert_store=AlertStore(sqlite_url(tmp)),
            dead_letters=DeadLetterStore(tmp / "deadletters.sqlite"),
            tokens=tokens,
            http=http,
        )
        transport = httpx.ASGITransport(app=create_app(ctx))
        async with httpx.AsyncClient(transport=transport, base_url="http://api", timeout=30) as c:
            yield Api(c, operator, ecology, police)
    influx_query(influxdb.url, "", f'DROP DATABASE "{database}"')


WINDOW = {
    "start": START.isoformat(),
    "end": (START + timedelta(hours=1)).isoformat(),
}


async def _get(api: Api, path: str, token: str, **params: Any) -> httpx.Response:
    return await api.client.get(path, params=params, headers={"Authorization": f"Bearer {token}"})


async def _audit(api: Api, department: str) -> list[dict[str, Any]]:
    r = await _get(api, "/audit", api.operator, department=department)
    assert r.status_code == 200, r.text
    rows: list[dict[str, Any]] = r.json()
    return rows


async def test_a_department_reads_river_series_and_the_read_is_audited(api: Api) -> None:
    before = await _audit(api, "ecology_env")
    r = await _get(
        api, "/series", api.ecology, kind="river", field="water_level_m", device=RIVER, **WINDOW
    )
    assert r.status_code == 200, r.text
    points = r.json()["series"][0]["points"]
    assert len(points) == RIVER_POINTS and points[0]["values"] == {"water_level_m": 2.5}
    rows = await _audit(api, "ecology_env")
    assert len(rows) == len(before) + 1
    row = rows[0]
    assert (row["endpoint"], row["data_set"], row["status"], row["rows"]) == (
        "/series",
        "river",
        200,
        RIVER_POINTS,
    )
    assert row["token_name"] == "ecology_env" and row["code"] is None
    assert row["query"]["device"] == [RIVER] and row["query"]["field"] == ["water_level_m"]
    assert abs(row["at_ms"] - _ms(datetime.now(UTC))) < 60_000


async def test_gate_events_are_not_shared_and_the_refusal_is_audited(api: Api) -> None:
    r = await _get(api, "/events", api.operator, kind="gate", **WINDOW)
    assert len(r.json()["events"]) == ROAD_EVENTS  # they are there
    r = await _get(api, "/events", api.police, kind="gate", **WINDOW)
    assert r.status_code == 403 and r.json()["error"]["code"] == "not_shared"
    row = (await _audit(api, "traffic_police"))[0]
    assert (row["endpoint"], row["data_set"], row["status"], row["code"], row["rows"]) == (
        "/events",
        "gate_events",
        403,
        "not_shared",
        None,
    )


async def test_road_events_under_a_grant_come_without_the_plate_hash(api: Api) -> None:
    r = await _get(api, "/events", api.operator, kind="road", **WINDOW)
    assert {"plate_hash", "speed_kmh", "lane"} <= set(r.json()["events"][0]["fields"])
    r = await _get(api, "/events", api.police, kind="road", **WINDOW)
    assert r.status_code == 200, r.text
    events = r.json()["events"]
    assert len(events) == ROAD_EVENTS
    assert all(e["fields"] == {"speed_kmh": 99.5, "lane": 2} for e in events)
    assert "h-" not in r.text  # no plate hash anywhere in the answer
    row = (await _audit(api, "traffic_police"))[0]
    assert (row["data_set"], row["status"], row["rows"]) == ("road_events", 200, ROAD_EVENTS)
    # Its device's newest event, as shared: no plate hash there either, and no status.
    r = await _get(api, f"/devices/{ROAD}", api.police)
    assert r.status_code == 200, r.text
    assert "plate_hash" not in r.json()["last"]["event"]["values"]
    assert "status" not in r.json()["last"]


async def test_an_expired_grant_is_refused_by_name(api: Api) -> None:
    r = await _get(api, "/events", api.ecology, kind="road", **WINDOW)
    assert r.status_code == 403 and r.json()["error"]["code"] == "grant_expired"
    assert "2020-01-01" in r.json()["error"]["message"]
    row = (await _audit(api, "ecology_env"))[0]
    assert (row["data_set"], row["code"], row["status"]) == ("road_events", "grant_expired", 403)


async def test_only_operators_list_the_audit(api: Api) -> None:
    await _get(api, "/series", api.ecology, kind="river", field="ph", device=RIVER, **WINDOW)
    await _get(api, "/devices", api.police)
    r = await _get(api, "/audit", api.ecology)
    assert r.status_code == 403 and r.json()["error"]["code"] == "operators_only"
    r = await _get(api, "/audit", api.operator)
    assert r.status_code == 200
    departments = {row["department"] for row in r.json()}
    assert departments == {"ecology_env", "traffic_police"}
    assert r.json()[0]["endpoint"] == "/audit" and r.json()[0]["code"] == "operators_only"
