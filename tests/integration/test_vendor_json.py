"""Vendor JSON end to end: devices of the six models in config/vendors.yaml publish their own
JSON on real Mosquitto, citysense reads it through the mapping, InfluxDB has our fields at the
vendor's time; messages the mapping cannot read are dead letters with ``vendor_mapping``."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from devices.registry import GateDevice, Registry, RiverDevice, RoadDevice
from ingest.settings import InfluxDialect
from ingest.sinks.deadletters import DeadLetterStore
from tests.integration.test_ingest_e2e import (
    make_settings,
    now_ms,
    publish,
    running_service,
    settle,
)
from tests.services import influx_query, new_database

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SHANGHAI = ZoneInfo("Asia/Shanghai")


def with_vendor_devices(city: Registry) -> Registry:
    """The example city and one device of each mapped model, in the first gate's grid."""
    grid = next(d.grid for d in city.devices.values() if d.kind == "gate")
    at = {"lat": 27.2, "lon": 111.4, "grid": grid}
    river = {
        "river": "资江",
        "normal_level_m": 200,
        "warning_level_m": 230,
        "guarantee_level_m": 240,
    }
    road = {"road": "S219", "speed_limit_kmh": 60}
    extra: list[GateDevice | RiverDevice | RoadDevice] = [
        GateDevice.model_validate(
            {
                "id": "vx-xa",
                "kind": "gate",
                "name": "门",
                **at,
                "community": "小区",
                "model": "xa-mj200",
            }
        ),
        GateDevice.model_validate(
            {
                "id": "vx-zk",
                "kind": "gate",
                "name": "闸",
                **at,
                "community": "小区",
                "model": "zk-gate-v3",
            }
        ),
        RiverDevice.model_validate(
            {"id": "vx-sw", "kind": "river", "name": "站", **at, **river, "model": "sw-rtu-s2"}
        ),
        RiverDevice.model_validate(
            {"id": "vx-hb", "kind": "river", "name": "标", **at, **river, "model": "hb-wq-m5"}
        ),
        RoadDevice.model_validate(
            {"id": "vx-ys", "kind": "road", "name": "卡", **at, **road, "model": "ys-cam-t7"}
        ),
        RoadDevice.model_validate(
            {"id": "vx-tr", "kind": "road", "name": "雷", **at, **road, "model": "tr-its-900"}
        ),
    ]
    return Registry(
        city.areas.values(),
        [*city.devices.values(), *extra],
        city.rivers.values(),
        city.roads.values(),
        city.departments.values(),
    )


def local(ms: int, fmt: str) -> str:
    return datetime.fromtimestamp(ms / 1000, SHANGHAI).strftime(fmt)


def iso(ms: int, offset: bool = True) -> str:
    moment = datetime.fromtimestamp(ms / 1000, SHANGHAI)
    text = moment.isoformat(timespec="milliseconds")
    return text if offset else text[: -len("+08:00")]


def messages(base: int) -> list[tuple[str, dict[str, Any], str, int, dict[str, Any]]]:
    """(topic, the vendor's JSON, our measurement, the stored time, fields we expect)."""
    return [
        (
            "iot/gate/vx-xa/telemetry",
            {
                "devSn": "XA2026120001",
                "msgNo": 881,
                "time": local(base, "%Y-%m-%d %H:%M:%S"),
                "doorStatus": 1,
                "inNum": 3,
                "outNum": 1,
                "carOut": 2,
                "batVol": 12400,
            },
            "gate",
            base,
            {
                "seq": 881,
                "door": "open",
                "people_in": 3,
                "people_out": 1,
                "vehicles_in": 0,
                "vehicles_out": 2,
                "battery_v": 12.4,
            },
        ),
        (
            "iot/gate/vx-xa/event",
            {
                "msgNo": 882,
                "time": local(base + 3000, "%Y-%m-%d %H:%M:%S"),
                "eventType": "ALARM_FORCE",
                "dir": "IN",
                "openType": 4,
            },
            "gate_event",
            base + 3000,
            {"seq": 882, "event": "forced_open", "direction": "in", "method": "password"},
        ),
        (
            "iot/gate/vx-xa/status",
            {"time": local(base + 1000, "%Y-%m-%d %H:%M:%S"), "state": "ONLINE"},
            "device_status",
            base + 1000,
            {"online": True},
        ),
        (
            "iot/gate/vx-zk/telemetry",
            {
                "header": {"sn": "ZK-V3-00417", "timestamp": base + 250, "seq": 77},
                "body": {
                    "door": {"state": "CLOSED"},
                    "counter": {"pedIn": "5", "pedOut": "2", "vehIn": "1", "vehOut": "0"},
                },
            },
            "gate",
            base + 250,
            {"seq": 77, "door": "closed", "people_in": 5, "people_out": 2, "vehicles_in": 1},
        ),
        (
            "iot/gate/vx-zk/event",
            {
                "header": {"sn": "ZK-V3-00417", "timestamp": base + 4000, "seq": 78},
                "body": {"code": 2003, "passDir": 1, "verify": "CARD"},
            },
            "gate_event",
            base + 4000,
            {"seq": 78, "event": "tailgating", "direction": "out", "method": "card"},
        ),
        (
            "iot/river/vx-sw/telemetry",
            {
                "stationId": "SW-S2-0031",
                "collectTime": local(base, "%Y/%m/%d %H:%M"),
                "wl": 20840,
                "rain": "1.5",
                "wt": 46.4,
                "volt": 12.6,
            },
            "river",
            base,
            {"water_level_m": 208.4, "rainfall_mm": 1.5, "water_temp_c": 8.0, "battery_v": 12.6},
        ),
        (
            "iot/river/vx-hb/telemetry",
            {
                "deviceNo": "HB-M5-0042",
                "ts": base // 1000 + 5,
                "sn": 5120,
                "data": [
                    {"code": "w01001", "v": 7.42},
                    {"code": "w01009", "v": 6.8},
                    {"code": "w21003", "v": 0.35},
                    {"code": "w01019", "v": 3.1},
                    {"code": "w21011", "v": 62},
                ],
                "sensor": {"level": {"mm": 208400}, "flow": {"ls": 125000}},
            },
            "river",
            base + 5000,
            {
                "seq": 5120,
                "ph": 7.42,
                "do_mgl": 6.8,
                "nh3n_mgl": 0.35,
                "codmn_mgl": 3.1,
                "tp_mgl": 0.062,
                "water_level_m": 208.4,
                "flow_m3s": 125.0,
            },
        ),
        (
            "iot/road/vx-ys/telemetry",
            {
                "camId": "YS-T7-1009",
                "statTime": iso(base),
                "flow": {"total": 42},
                "avgSpeed": 12.5,
                "occupancy": 0.18,
                "queueLen": 35,
            },
            "road",
            base,
            {
                "vehicle_count": 42,
                "avg_speed_kmh": 45.0,
                "occupancy_pct": 18.0,
                "queue_length_m": 35,
            },
        ),
        (
            "iot/road/vx-ys/event",
            {
                "camId": "YS-T7-1009",
                "alarmTime": iso(base + 3250),
                "alarmType": "RETROGRADE",
                "speed": 10.0,
                "laneNo": 2,
                "plateInfo": {"plateNo": "湘E12345"},
                "score": 87,
            },
            "road_event",
            base + 3250,
            {"event": "wrong_way", "speed_kmh": 36.0, "lane": 2, "confidence": 0.87},
        ),
        (
            "iot/road/vx-tr/telemetry",
            {
                "sn": "TR900-2231",
                "t": iso(base + 2000, offset=False),
                "lanes": [{"no": 1, "cnt": 20}, {"no": 2, "cnt": 17}],
                "sum": {"cnt": 37, "spd": 48.5, "occ": 22.5},
            },
            "road",
            base + 2000,
            {"vehicle_count": 37, "avg_speed_kmh": 48.5, "occupancy_pct": 22.5},
        ),
        (
            "iot/road/vx-tr/event",
            {
                "sn": "TR900-2231",
                "t": iso(base + 6000, offset=False),
                "evt": {"c": 3, "ln": 1, "conf": 0.93},
            },
            "road_event",
            base + 6000,
            {"event": "accident", "lane": 1, "confidence": 0.93},
        ),
    ]


def bad_messages(base: int) -> list[tuple[str, dict[str, Any], str]]:
    """Vendor JSON the mappings cannot read, with what the detail must say."""
    return [
        (
            "iot/gate/vx-xa/event",
            {"time": local(base, "%Y-%m-%d %H:%M:%S"), "eventType": "ALARM_SMOKE"},
            "model xa-mj200: event ← eventType: 'ALARM_SMOKE' is not in the map",
        ),
        (
            "iot/gate/vx-zk/telemetry",
            {"header": {"timestamp": base}, "body": {"door": {"state": "OPENED"}}},
            "model zk-gate-v3: people_in ← body.counter.pedIn: not in the message",
        ),
        (
            "iot/road/vx-ys/telemetry",
            {"statTime": "昨天 10:00", "flow": {"total": 1}},
            "model ys-cam-t7: ts ← statTime: '昨天 10:00' is not iso8601",
        ),
    ]


async def test_vendor_json_is_stored_as_ours_or_dead_lettered_by_name(
    tmp_path: Path, mosquitto: Any, influxdb: Any, registry: Registry
) -> None:
    city = with_vendor_devices(registry)
    database = new_database(influxdb.url, "vendors")
    settings = make_settings(
        tmp_path,
        mosquitto.port,
        influx_url=influxdb.url,
        influx_database=database,
        influx_dialect=InfluxDialect.V1,
        vendors=REPO / "config" / "vendors.yaml",
    )
    # A whole minute a little back: sw-rtu-s2 writes its time to the minute.
    moment = datetime.fromtimestamp(now_ms() / 1000 - 120, UTC).replace(second=0, microsecond=0)
    base = int(moment.timestamp() * 1000)
    good = messages(base)
    bad = bad_messages(base)
    wire = [(t, json.dumps(d, ensure_ascii=False).encode()) for t, d, *_ in good]
    wire += [(t, json.dumps(d, ensure_ascii=False).encode()) for t, d, _ in bad]

    async with running_service(settings, city) as state:
        await asyncio.to_thread(publish, mosquitto.port, wire)
        await settle(state, len(wire))
        assert state.ledger.received == len(wire)
        assert state.ledger.dead_lettered == len(bad), state.ledger.summary(0)
        assert state.ledger.balances(0), state.ledger.summary(0)

    for topic, _, measurement, ts, fields in good:
        device = topic.split("/")[2]
        series = influx_query(
            influxdb.url,
            database,
            f"SELECT * FROM {measurement} WHERE device = '{device}'",
            epoch="ms",
        )
        assert series, (topic, measurement)
        rows = [dict(zip(series[0]["columns"], v, strict=True)) for v in series[0]["values"]]
        matching = [r for r in rows if r["time"] == ts]
        assert len(matching) == 1, (topic, ts, rows)
        row = matching[0]
        for name, value in fields.items():
            assert row[name] == pytest.approx(value), (topic, name, row)
        assert row["grid"] == city.devices[device].grid
    # The plate of the camera's event was hashed, as from any camera.
    event = influx_query(influxdb.url, database, "SELECT * FROM road_event WHERE device = 'vx-ys'")
    flat = json.dumps(event, ensure_ascii=False)
    assert "12345" not in flat and "plate_hash" in event[0]["columns"]

    store = DeadLetterStore(tmp_path / "deadletters.sqlite3")
    letters = store.list(limit=100)
    store.close()
    assert sorted((d.topic, d.reason, d.detail) for d in letters) == sorted(
        (t, "vendor_mapping", detail) for t, _, detail in bad
    )
    kept = {d.topic: json.loads(d.payload) for d in letters}
    for topic, document, _ in bad:
        assert kept[topic] == document  # the vendor's JSON, raw
