"""The NGSI-LD API (ingest/api/ngsild.py) on the real InfluxDB 1.6, on points written as the
ingest path encodes them; every answer expanded with pyld, contexts served from our files."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from pyld import jsonld  # type: ignore[import-untyped]

from devices.kinds import Channel, Kind
from devices.payloads import RiverTelemetry, RoadTelemetry, Status
from devices.registry import Registry, RoadDevice
from ingest.api.ngsild import CONTEXT_FILE
from ingest.api.ngsild_model import CORE_CONTEXT
from ingest.api.tokens import Role, TokenStore
from ingest.intake.decode import Decoded
from ingest.intake.lineprotocol import LineEncoder
from ingest.ops.processes import ManagedProcess
from tests.inprocess import api_over_influx
from tests.services import influx_query, new_database

pytestmark = pytest.mark.integration

BASE = "http://api"
OUR_CONTEXT = f"{BASE}/ngsi-ld/context.jsonld"
CORE_FILE = CONTEXT_FILE.parent / "ngsi-ld-core-context-v1.8.subset.jsonld"
RIVER = "river-zj-0001"
T0 = (datetime.now(UTC) - timedelta(hours=2)).replace(second=0, microsecond=0)

NGSI = "https://uri.etsi.org/ngsi-ld/"
HAS_VALUE, OBSERVED_AT, DATE_TIME = NGSI + "hasValue", NGSI + "observedAt", NGSI + "DateTime"
SDM = "https://smartdatamodels.org/"
WQ, ENV, TRANSPORT, DEV = (
    SDM + f"dataModel.{s}/" for s in ("WaterQuality", "Environment", "Transportation", "Device")
)


def ms(seconds: int) -> int:
    return int((T0 + timedelta(seconds=seconds)).timestamp() * 1000)


def iso(seconds: int) -> str:
    return (T0 + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def load_locally(url: str, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """pyld's document loader: our two context files, never the network."""
    files = {OUR_CONTEXT: CONTEXT_FILE, CORE_CONTEXT: CORE_FILE}
    if url not in files:
        raise AssertionError(f"the test would have fetched {url}")
    document = json.loads(Path(files[url]).read_text("utf-8"))
    return {
        "contentType": "application/ld+json",
        "contextUrl": None,
        "documentUrl": url,
        "document": document,
    }


def expand(body: Any) -> list[dict[str, Any]]:
    expanded: list[dict[str, Any]] = jsonld.expand(body, {"documentLoader": load_locally})
    return expanded


def one(node: dict[str, Any], iri: str) -> dict[str, Any]:
    """The single value of ``iri`` on an expanded node."""
    values = node[iri]
    assert len(values) == 1, values
    value: dict[str, Any] = values[0]
    return value


def observed_property(node: dict[str, Any], iri: str) -> tuple[Any, str]:
    """(value, observedAt) of an expanded Property, checking it is one, with a DateTime time."""
    attribute = one(node, iri)
    assert attribute["@type"] == [NGSI + "Property"]
    at = one(attribute, OBSERVED_AT)
    assert at["@type"] == DATE_TIME
    return one(attribute, HAS_VALUE)["@value"], at["@value"]


@dataclass
class Api:
    client: httpx.AsyncClient
    operator: dict[str, str]
    worker: dict[str, str]  # bound to the camera's grid only
    camera: RoadDevice


@pytest.fixture(scope="module")
async def api(
    influxdb: ManagedProcess, registry: Registry, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Api]:
    tmp = tmp_path_factory.mktemp("ngsild")
    database = new_database(influxdb.url, "ngsild")
    camera = next(
        d for d in registry.devices.values() if isinstance(d, RoadDevice) and d.segment is not None
    )
    assert registry.devices[RIVER].grid != camera.grid
    river = registry.devices[RIVER]
    messages = [
        Decoded(
            Kind.RIVER,
            Channel.TELEMETRY,
            river,
            RiverTelemetry(
                ts=ms(10),
                seq=1,
                water_level_m=209.0,
                flow_m3s=85.5,
                ph=7.2,
                do_mgl=6.5,
                nh3n_mgl=0.3,
                codmn_mgl=3.1,
                tp_mgl=0.08,
                water_temp_c=12.0,
            ),
            ms(10),
        ),
        # Only the level: the quality keeps its time of 10 s, the level moves to 70 s.
        Decoded(
            Kind.RIVER,
            Channel.TELEMETRY,
            river,
            RiverTelemetry(ts=ms(70), seq=2, water_level_m=209.4),
            ms(70),
        ),
        Decoded(Kind.RIVER, Channel.STATUS, river, Status(online=True, ts=ms(5)), ms(5)),
        Decoded(
            Kind.ROAD,
            Channel.TELEMETRY,
            camera,
            RoadTelemetry(
                ts=ms(30),
                seq=1,
                vehicle_count=17,
                avg_speed_kmh=camera.speed_limit_kmh * 0.95,
                occupancy_pct=12.5,
            ),
            ms(30),
        ),
    ]
    encoder = LineEncoder(registry, hash_plate=lambda plate: plate)
    lines = "\n".join(encoder.encode(m) for m in messages)
    tokens = TokenStore.load(tmp / "tokens.yaml")
    operator, _ = tokens.add("duty officer", Role.OPERATOR)
    worker, _ = tokens.add("li.na", Role.GRID_WORKER, [camera.grid])
    async with api_over_influx(
        influxdb.url, database, registry, tokens, tmp, lines, BASE
    ) as client:
        yield Api(
            client,
            {"Authorization": f"Bearer {operator}"},
            {"Authorization": f"Bearer {worker}"},
            camera,
        )
    influx_query(influxdb.url, "", f'DROP DATABASE "{database}"')


async def get(api: Api, path: str, **params: str) -> Any:
    response = await api.client.get(path, params=params, headers=api.operator)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/ld+json")
    return response.json()


async def test_water_quality_expands_to_the_water_quality_models_iris(
    api: Api, registry: Registry
) -> None:
    body = await get(api, f"/ngsi-ld/v1/entities/urn:ngsi-ld:WaterQualityObserved:{RIVER}")
    assert body["@context"] == [OUR_CONTEXT, CORE_CONTEXT]
    [node] = expand(body)
    assert node["@id"] == f"urn:ngsi-ld:WaterQualityObserved:{RIVER}"
    assert node["@type"] == [WQ + "WaterQualityObserved"]
    expected = {"pH": 7.2, "O2": 6.5, "NH4": 0.3, "cod": 3.1, "P-TOT": 0.08, "temperature": 12.0}
    for name, number in expected.items():
        value, at = observed_property(node, WQ + name)
        assert isinstance(value, float) and value == number, name
        assert at == iso(10), name
    assert one(one(node, WQ + "O2"), NGSI + "unitCode")["@value"] == "M1"
    assert one(one(node, WQ + "temperature"), NGSI + "unitCode")["@value"] == "CEL"
    date = one(one(node, SDM + "dateObserved"), HAS_VALUE)
    assert date == {"@type": DATE_TIME, "@value": iso(10)}
    device = one(node, ENV + "refDevice")
    assert device["@type"] == [NGSI + "Relationship"]
    assert one(device, NGSI + "hasObject") == {"@id": f"urn:ngsi-ld:Device:{RIVER}"}
    where = one(node, NGSI + "location")
    assert where["@type"] == [NGSI + "GeoProperty"]
    point = one(where, HAS_VALUE)
    assert point["@type"] == ["https://purl.org/geojson/vocab#Point"]
    coordinates = one(point, "https://purl.org/geojson/vocab#coordinates")["@list"]
    station = registry.devices[RIVER]
    assert [c["@value"] for c in coordinates] == [station.lon, station.lat]  # longitude first


async def test_water_observed_keeps_each_readings_own_time(api: Api) -> None:
    [node] = expand(await get(api, f"/ngsi-ld/v1/entities/urn:ngsi-ld:WaterObserved:{RIVER}"))
    assert node["@type"] == [ENV + "WaterObserved"]
    assert observed_property(node, ENV + "height") == (209.4, iso(70))
    assert observed_property(node, ENV + "flow") == (85.5, iso(10))
    assert one(one(node, ENV + "height"), NGSI + "unitCode")["@value"] == "MTR"
    assert ENV + "precipitation" not in node  # never measured


async def test_traffic_flow_and_device(api: Api) -> None:
    cam = api.camera
    [traffic] = expand(
        await get(api, f"/ngsi-ld/v1/entities/urn:ngsi-ld:TrafficFlowObserved:{cam.id}")
    )
    assert traffic["@type"] == [TRANSPORT + "TrafficFlowObserved"]
    intensity, at = observed_property(traffic, TRANSPORT + "intensity")
    assert intensity == 17 and isinstance(intensity, int) and at == iso(30)
    assert observed_property(traffic, TRANSPORT + "occupancy") == (0.125, iso(30))
    assert observed_property(traffic, TRANSPORT + "congested") == (False, iso(30))
    segment = one(one(traffic, TRANSPORT + "refRoadSegment"), NGSI + "hasObject")
    assert segment == {"@id": f"urn:ngsi-ld:RoadSegment:{cam.segment}"}
    [device] = expand(await get(api, f"/ngsi-ld/v1/entities/urn:ngsi-ld:Device:{RIVER}"))
    assert device["@type"] == [DEV + "Device"]
    assert observed_property(device, DEV + "deviceState") == ("online", iso(5))
    reported = one(one(device, DEV + "dateLastValueReported"), HAS_VALUE)
    assert reported == {"@type": DATE_TIME, "@value": iso(70)}
    controlled = {v["@value"] for v in one(device, DEV + "controlledProperty")[HAS_VALUE]}
    assert {"waterLevel", "pH"} <= controlled


async def test_temporal_query_of_one_attribute(api: Api) -> None:
    body = await get(
        api,
        f"/ngsi-ld/v1/temporal/entities/urn:ngsi-ld:WaterObserved:{RIVER}",
        attrs="height",
        timerel="between",
        timeAt=iso(0),
        endTimeAt=iso(120),
    )
    assert [(i["value"], i["observedAt"]) for i in body["height"]] == [
        (209.0, iso(10)),
        (209.4, iso(70)),
    ]
    [node] = expand(body)
    instances = node[ENV + "height"]
    assert [one(i, HAS_VALUE)["@value"] for i in instances] == [209.0, 209.4]
    assert all(one(i, OBSERVED_AT)["@type"] == DATE_TIME for i in instances)
    assert all(i["@type"] == [NGSI + "Property"] for i in instances)
    # Outside the interval: no instances.
    later = await get(
        api,
        f"/ngsi-ld/v1/temporal/entities/urn:ngsi-ld:WaterObserved:{RIVER}",
        attrs="height",
        timerel="between",
        timeAt=iso(71),
        endTimeAt=iso(120),
    )
    assert later["height"] == []


async def test_lists_filter_page_and_count(api: Api, registry: Registry) -> None:
    listed = await api.client.get(
        "/ngsi-ld/v1/entities",
        params={"type": "Device", "count": "true", "limit": "5", "offset": "1"},
        headers=api.operator,
    )
    assert listed.status_code == 200
    assert listed.headers["NGSILD-Results-Count"] == str(len(registry.devices))
    ids = sorted(f"urn:ngsi-ld:Device:{d}" for d in registry.devices)
    assert [e["id"] for e in listed.json()] == ids[1:6]
    water = await get(api, "/ngsi-ld/v1/entities", type="WaterObserved")
    assert [e["id"] for e in water] == [f"urn:ngsi-ld:WaterObserved:{RIVER}"]  # the one with data
    assert await get(api, "/ngsi-ld/v1/entities", type="WaterObserved", q="height>209.5") == []
    high = await get(api, "/ngsi-ld/v1/entities", type="WaterObserved", q="height>209;flow==85.5")
    assert len(high) == 1
    rivers = await get(
        api,
        "/ngsi-ld/v1/entities",
        type="Device",
        idPattern="^urn:ngsi-ld:Device:river-",
        limit="1000",
    )
    assert {e["id"] for e in rivers} == {
        f"urn:ngsi-ld:Device:{d.id}" for d in registry.devices.values() if d.kind is Kind.RIVER
    }
    for entity in expand(rivers):
        assert entity["@type"] == [DEV + "Device"]


async def test_an_area_token_sees_only_its_areas(api: Api, registry: Registry) -> None:
    mine = await api.client.get(
        "/ngsi-ld/v1/entities", params={"type": "Device", "limit": "1000"}, headers=api.worker
    )
    grid = api.camera.grid
    assert {e["id"] for e in mine.json()} == {
        f"urn:ngsi-ld:Device:{d.id}" for d in registry.devices.values() if d.grid == grid
    }
    for path in (
        f"/ngsi-ld/v1/entities/urn:ngsi-ld:WaterObserved:{RIVER}",
        f"/ngsi-ld/v1/temporal/entities/urn:ngsi-ld:WaterObserved:{RIVER}?attrs=height"
        f"&timerel=between&timeAt={iso(0)}&endTimeAt={iso(120)}",
    ):
        hidden = await api.client.get(path, headers=api.worker)
        assert hidden.status_code == 404
        assert hidden.json()["type"] == "https://uri.etsi.org/ngsi-ld/errors/ResourceNotFound"
    own = await api.client.get(
        f"/ngsi-ld/v1/entities/urn:ngsi-ld:TrafficFlowObserved:{api.camera.id}", headers=api.worker
    )
    assert own.status_code == 200


async def test_plain_json_has_the_context_in_a_link_header(api: Api) -> None:
    response = await api.client.get(
        f"/ngsi-ld/v1/entities/urn:ngsi-ld:WaterObserved:{RIVER}",
        headers={**api.operator, "Accept": "application/json"},
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert "@context" not in response.json()
    assert response.headers["Link"].startswith(f"<{OUR_CONTEXT}>;")
    assert 'rel="http://www.w3.org/ns/json-ld#context"' in response.headers["Link"]
