"""NGSI-LD entities (ingest/api/ngsild_model.py), parameters and ProblemDetails
(ingest/api/ngsild_query.py), and the routes' answers that need no InfluxDB."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest

from devices.kinds import Channel
from devices.registry import Registry, RiverDevice, RoadDevice, load_registry
from devices.units import numeric_fields
from ingest.alerts.store import AlertStore, sqlite_url
from ingest.api.app import create_app
from ingest.api.context import ApiContext
from ingest.api.ngsild import CONTEXT_FILE
from ingest.api.ngsild_model import (
    CORE_CONTEXT,
    DEVICE,
    TRAFFIC,
    TYPES,
    WATER,
    WATER_QUALITY,
    DeviceState,
    congested,
    device_entity,
    observed,
    parse_urn,
    temporal,
    urn,
    with_context,
)
from ingest.api.ngsild_query import NgsiLdError, id_matcher, parse_int, parse_q, parse_time
from ingest.api.tokens import Role, TokenStore
from ingest.settings import Settings
from ingest.sinks.deadletters import DeadLetterStore
from rules.loader import parse_rules

REPO = Path(__file__).resolve().parents[2]
T_MS = 1_795_000_000_000  # 2026-11-18T11:06:40Z
T_ISO = "2026-11-18T11:06:40.000Z"


@pytest.fixture(scope="module")
def city() -> Registry:
    return load_registry(REPO / "config" / "registry.yaml")


def river(city: Registry) -> RiverDevice:
    device = city.devices["river-zj-0001"]
    assert isinstance(device, RiverDevice)
    return device


def camera(city: Registry) -> RoadDevice:
    device = next(d for d in city.devices.values() if isinstance(d, RoadDevice) and d.segment)
    return device


# --- the mapping itself ------------------------------------------------------------------------


def test_every_attribute_comes_from_a_numeric_field_of_its_kind() -> None:
    for entity_type in (WATER_QUALITY, WATER, TRAFFIC):
        assert entity_type.kind is not None
        fields = numeric_fields(entity_type.kind, Channel.TELEMETRY)
        assert [a.field for a in entity_type.attrs if a.field not in fields] == []
        names = [a.name for a in entity_type.attrs]
        assert len(set(names)) == len(names)


def test_the_context_maps_every_term_to_a_smart_data_models_iri() -> None:
    terms = json.loads(CONTEXT_FILE.read_text("utf-8"))["@context"]
    used = {a.name for t in TYPES.values() for a in t.attrs} | set(TYPES)
    used |= {"dateObserved", "refDevice", "refRoadSegment", "congested", "name", "category"}
    used |= {"controlledProperty", "deviceState", "dateLastValueReported"}
    assert sorted(used - set(terms)) == []
    assert all(iri.startswith("https://smartdatamodels.org/") for iri in terms.values())
    assert terms["pH"] == "https://smartdatamodels.org/dataModel.WaterQuality/pH"
    assert terms["height"] == "https://smartdatamodels.org/dataModel.Environment/height"
    assert terms["intensity"] == "https://smartdatamodels.org/dataModel.Transportation/intensity"
    assert terms["Device"] == "https://smartdatamodels.org/dataModel.Device/Device"
    # The core terms are left to the core context, which comes last.
    assert not {"id", "type", "value", "observedAt", "location", "object"} & set(terms)


# --- entities --------------------------------------------------------------------------------


def test_water_quality_entity_names_types_and_units(city: Registry) -> None:
    latest = {
        "ph": (7.4, T_MS),
        "do_mgl": (6.8, T_MS - 60_000),
        "nh3n_mgl": (0.42, T_MS),
        "codmn_mgl": (3.9, T_MS),
        "tp_mgl": (0.11, T_MS),
        "water_temp_c": (14.5, T_MS),
        "water_level_m": (209.0, T_MS),  # WaterObserved's, not this entity's
    }
    entity = observed(WATER_QUALITY, river(city), latest)
    assert entity is not None
    assert entity["id"] == "urn:ngsi-ld:WaterQualityObserved:river-zj-0001"
    assert entity["type"] == "WaterQualityObserved"
    assert entity["pH"] == {"type": "Property", "value": 7.4, "observedAt": T_ISO}
    assert entity["O2"] == {
        "type": "Property",
        "value": 6.8,
        "observedAt": "2026-11-18T11:05:40.000Z",
        "unitCode": "M1",
    }
    units = {k: v.get("unitCode") for k, v in entity.items() if isinstance(v, dict)}
    assert units["NH4"] == units["cod"] == units["P-TOT"] == "M1"
    assert units["temperature"] == "CEL"
    assert "height" not in entity and "turbidity" not in entity  # not measured: left out
    assert entity["dateObserved"] == {
        "type": "Property",
        "value": {"@type": "DateTime", "@value": T_ISO},  # the newest reading
    }
    assert entity["refDevice"] == {
        "type": "Relationship",
        "object": "urn:ngsi-ld:Device:river-zj-0001",
    }
    assert entity["location"] == {
        "type": "GeoProperty",
        "value": {"type": "Point", "coordinates": [111.48815, 27.24429]},  # lon, lat
    }


def test_water_entity_and_none_without_readings(city: Registry) -> None:
    entity = observed(
        WATER, river(city), {"water_level_m": (209.25, T_MS), "flow_m3s": (80.0, T_MS)}
    )
    assert entity is not None
    assert entity["id"] == "urn:ngsi-ld:WaterObserved:river-zj-0001"
    assert entity["height"]["unitCode"] == "MTR" and entity["height"]["value"] == 209.25
    assert entity["flow"]["unitCode"] == "MQS"
    assert observed(WATER, river(city), {"ph": (7.0, T_MS)}) is None  # no water data at all


def test_traffic_entity_scales_occupancy_and_judges_congestion(city: Registry) -> None:
    cam = camera(city)
    free = cam.speed_limit_kmh
    latest = {
        "vehicle_count": (42, T_MS),
        "avg_speed_kmh": (free * 0.3, T_MS),
        "occupancy_pct": (37.5, T_MS),
    }
    entity = observed(TRAFFIC, cam, latest, free_flow_kmh=free)
    assert entity is not None
    assert entity["intensity"] == {"type": "Property", "value": 42, "observedAt": T_ISO}
    assert entity["averageVehicleSpeed"]["unitCode"] == "KMH"
    assert entity["occupancy"]["value"] == 0.375  # a fraction, as the model says
    assert entity["congested"]["value"] is True
    assert entity["refRoadSegment"] == {
        "type": "Relationship",
        "object": f"urn:ngsi-ld:RoadSegment:{cam.segment}",
    }
    latest["avg_speed_kmh"] = (free * 0.95, T_MS)
    fluent = observed(TRAFFIC, cam, latest, free_flow_kmh=free)
    assert fluent is not None and fluent["congested"]["value"] is False


def test_congested_from_light_congestion_on() -> None:
    assert congested(100 * 0.55, 100) is True  # r = 0.55: index over 6, moderate
    assert congested(100 * 0.70, 100) is False  # r = 0.70: index under 4, basically free


def test_device_entity(city: Registry) -> None:
    entity = device_entity(river(city), DeviceState(T_MS, False, T_MS - 1000))
    assert entity["id"] == "urn:ngsi-ld:Device:river-zj-0001"
    assert entity["type"] == "Device"
    assert entity["category"] == {"type": "Property", "value": ["sensor"]}
    assert "waterLevel" in entity["controlledProperty"]["value"]
    assert entity["deviceState"] == {
        "type": "Property",
        "value": "offline",
        "observedAt": "2026-11-18T11:06:39.000Z",
    }
    assert entity["dateLastValueReported"]["value"] == {"@type": "DateTime", "@value": T_ISO}
    quiet = device_entity(river(city), DeviceState(None, None, None))
    assert "deviceState" not in quiet and "dateLastValueReported" not in quiet


def test_temporal_representation_and_context(city: Registry) -> None:
    attr = WATER.attr("height")
    assert attr is not None
    body = temporal(WATER, river(city), attr, [(T_MS, 209.0), (T_MS + 60_000, 209.5)])
    assert body["height"] == [
        {"type": "Property", "value": 209.0, "observedAt": T_ISO, "unitCode": "MTR"},
        {
            "type": "Property",
            "value": 209.5,
            "observedAt": "2026-11-18T11:07:40.000Z",
            "unitCode": "MTR",
        },
    ]
    ld = with_context(body, "http://api/ngsi-ld/context.jsonld")
    assert ld["@context"] == ["http://api/ngsi-ld/context.jsonld", CORE_CONTEXT]


def test_urns_round_trip() -> None:
    assert urn("Device", "gate-sq-0001") == "urn:ngsi-ld:Device:gate-sq-0001"
    assert parse_urn("urn:ngsi-ld:WaterObserved:river-zj-0001") == (WATER, "river-zj-0001")
    assert parse_urn("urn:ngsi-ld:Device:x") == (DEVICE, "x")
    for wrong in (
        "river-zj-0001",
        "urn:ngsi-ld:Weather:x",
        "urn:ngsi-ld:Device:",
        "urn:x:Device:y",
    ):
        assert parse_urn(wrong) is None


# --- parameters --------------------------------------------------------------------------------


def test_id_pattern_subset() -> None:
    ids = ["urn:ngsi-ld:Device:river-zj-0001", "urn:ngsi-ld:Device:gate-sq-0001"]
    assert [i for i in ids if id_matcher("river")(i)] == ids[:1]
    assert [i for i in ids if id_matcher("^urn:ngsi-ld:Device:.*-0001$")(i)] == ids
    assert [i for i in ids if id_matcher("^urn:ngsi-ld:Device:gate-sq-00.1$")(i)] == ids[1:]
    assert not id_matcher("^river")(ids[0])
    assert not id_matcher("0001:$")(ids[0])


def test_id_pattern_refuses_what_it_cannot_match_safely() -> None:
    for pattern in ("(a+)+$", "river|gate", "[a-z]+", "x" * 300):
        with pytest.raises(NgsiLdError) as caught:
            id_matcher(pattern)
        assert caught.value.status == 400 and caught.value.problem == "BadRequestData"


def test_id_pattern_is_fast_on_many_wildcards() -> None:
    matches = id_matcher(".*" * 100 + "x")
    assert not matches("a" * 200)  # a backtracking regex would take ages here


def test_q_terms() -> None:
    entity = {
        "pH": {"type": "Property", "value": 7.4},
        "deviceState": {"type": "Property", "value": "online"},
        "congested": {"type": "Property", "value": True},
        "refDevice": {"type": "Relationship", "object": "urn:ngsi-ld:Device:r"},
    }

    def holds(q: str) -> bool:
        return all(t.holds(entity) for t in parse_q(q))

    assert holds("pH>7;pH<=7.4")
    assert not holds("pH>7.4")
    assert holds('deviceState=="online"') and holds("deviceState==online")
    assert holds("congested==true")
    assert holds('refDevice=="urn:ngsi-ld:Device:r"')
    assert not holds("O2>1")  # no such attribute: no match
    assert not holds("pH==online")  # a number against a string
    with pytest.raises(NgsiLdError):
        parse_q("pH~7")


def test_ints_and_times() -> None:
    assert parse_int("limit", None, 20, 0, 1000) == 20
    assert parse_int("limit", "5", 20, 0, 1000) == 5
    for wrong in ("-1", "1001", "abc"):
        with pytest.raises(NgsiLdError):
            parse_int("limit", wrong, 20, 0, 1000)
    assert parse_time("timeAt", "2026-11-18T11:06:40Z").tzinfo is not None
    times: tuple[str | None, ...] = (None, "yesterday", "2026-11-18T07:06:40")  # naive last
    for raw in times:
        with pytest.raises(NgsiLdError):
            parse_time("timeAt", raw)


# --- routes that answer before asking InfluxDB ---------------------------------------------------


@pytest.fixture
async def client(
    tmp_path: Path, city: Registry
) -> AsyncIterator[tuple[httpx.AsyncClient, str, str]]:
    tokens = TokenStore.load(tmp_path / "tokens.yaml")
    operator, _ = tokens.add("duty officer", Role.OPERATOR)
    gate = city.devices["gate-sq-0001"]
    worker, _ = tokens.add("li.na", Role.GRID_WORKER, [gate.grid])
    async with aiohttp.ClientSession() as http:
        ctx = ApiContext(
            # Nothing listens there: a route that asked InfluxDB would answer 503.
            settings=Settings(data_dir=tmp_path, influx_url="http://127.0.0.1:9"),
            registry=city,
            rules=parse_rules({"rules": []}, "<test>", city),
            rules_path=tmp_path / "rules.yaml",
            alert_store=AlertStore(sqlite_url(tmp_path)),
            dead_letters=DeadLetterStore(tmp_path / "deadletters.sqlite"),
            tokens=tokens,
            http=http,
        )
        transport = httpx.ASGITransport(app=create_app(ctx))
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as c:
            yield c, operator, worker


def problem(response: httpx.Response, status: int, kind: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["type"] == f"https://uri.etsi.org/ngsi-ld/errors/{kind}"
    assert body["title"] == kind and body["detail"]
    return body


async def test_problem_details(client: tuple[httpx.AsyncClient, str, str]) -> None:
    c, operator, worker = client
    auth = {"Authorization": f"Bearer {operator}"}
    base = "/ngsi-ld/v1/entities"
    problem(await c.get(base, headers=auth), 400, "BadRequestData")  # no type
    problem(
        await c.get(base, params={"type": "Device", "limit": "0"}, headers=auth),
        400,
        "BadRequestData",
    )
    problem(
        await c.get(base, params={"type": "Device", "idPattern": "(a+)+"}, headers=auth),
        400,
        "BadRequestData",
    )
    problem(await c.get(f"{base}/river-zj-0001", headers=auth), 404, "ResourceNotFound")
    problem(
        await c.get(f"{base}/urn:ngsi-ld:Device:no-such", headers=auth), 404, "ResourceNotFound"
    )
    # A gate is no WaterObserved.
    problem(
        await c.get(f"{base}/urn:ngsi-ld:WaterObserved:gate-sq-0001", headers=auth),
        404,
        "ResourceNotFound",
    )
    temporal_url = "/ngsi-ld/v1/temporal/entities/urn:ngsi-ld:WaterObserved:river-zj-0001"
    problem(await c.get(temporal_url, params={"attrs": "pH"}, headers=auth), 400, "BadRequestData")
    missing_end = {"attrs": "height", "timerel": "between", "timeAt": "2026-11-18T00:00:00Z"}
    problem(await c.get(temporal_url, params=missing_end, headers=auth), 400, "BadRequestData")
    # A grid worker: a device outside its areas does not exist for it.
    mine = {"Authorization": f"Bearer {worker}"}
    problem(
        await c.get(f"{base}/urn:ngsi-ld:Device:river-zj-0001", headers=mine),
        404,
        "ResourceNotFound",
    )
    # A type nobody has is no error: an empty list, and InfluxDB is not asked.
    empty = await c.get(base, params={"type": "WeatherObserved"}, headers=auth)
    assert empty.status_code == 200 and empty.json() == []
    assert empty.headers["content-type"].startswith("application/ld+json")
    # InfluxDB down: an NGSI-LD InternalError, not a trace.
    down = await c.get(f"{base}/urn:ngsi-ld:Device:river-zj-0001", headers=auth)
    problem(down, 503, "InternalError")


async def test_a_token_is_needed_but_not_for_the_context(
    client: tuple[httpx.AsyncClient, str, str],
) -> None:
    c, _, _ = client
    assert (await c.get("/ngsi-ld/v1/entities", params={"type": "Device"})).status_code == 401
    context = await c.get("/ngsi-ld/context.jsonld")
    assert context.status_code == 200
    assert context.headers["content-type"].startswith("application/ld+json")
    assert context.json() == json.loads(CONTEXT_FILE.read_text("utf-8"))
