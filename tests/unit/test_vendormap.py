"""Vendor JSON mappings (devices/vendormap.py): each conversion, each shipped vendor shape read
into the exact payload our models validate, the named failures, the file's problems, and a fuzz
of ``apply`` over random JSON."""

from __future__ import annotations

import contextlib
import itertools
import json
import typing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devices.kinds import Channel, Kind
from devices.payloads import schema_for
from devices.registry import parse_registry
from devices.units import UNITS
from devices.vendormap import (
    CONVERSIONS,
    ChannelMap,
    ConversionName,
    MappingError,
    VendorMapError,
    VendorMaps,
    apply,
    check_devices,
    load_vendor_maps,
    parse_vendor_maps,
)
from ingest.intake.decode import Decoded, Decoder, Reason, Rejection
from ingest.service import StartRefused, vendor_maps
from ingest.settings import Settings
from tests.unit.smallcity import SMALL_AREAS, SMALL_DEVICES

ROOT = Path(__file__).resolve().parents[2]
VENDORS_FILE = ROOT / "config" / "vendors.yaml"
MAPS = load_vendor_maps(VENDORS_FILE)
# 2026-12-05 10:00:00 in Shanghai: the time every example document below says.
T0 = int(datetime(2026, 12, 5, 2, 0, 0, tzinfo=UTC).timestamp() * 1000)
NOW = T0 + 10_000

_AT = {"lat": 27.2, "lon": 111.4, "grid": "g"}
_RIVER = {"river": "资江", "normal_level_m": 200, "warning_level_m": 210, "guarantee_level_m": 215}
_ROAD = {"road": "S219", "speed_limit_kmh": 60}
VENDOR_DEVICES: list[dict[str, Any]] = [
    {"id": "xa1", "kind": "gate", "name": "门", **_AT, "community": "小区", "model": "xa-mj200"},
    {"id": "zk1", "kind": "gate", "name": "闸", **_AT, "community": "小区", "model": "zk-gate-v3"},
    {"id": "sw1", "kind": "river", "name": "站", **_AT, **_RIVER, "model": "sw-rtu-s2"},
    {"id": "hb1", "kind": "river", "name": "标", **_AT, **_RIVER, "model": "hb-wq-m5"},
    {"id": "ys1", "kind": "road", "name": "卡", **_AT, **_ROAD, "model": "ys-cam-t7"},
    {"id": "tr1", "kind": "road", "name": "雷", **_AT, **_ROAD, "model": "tr-its-900"},
    # A model nobody maps: our JSON, as a device without a model.
    {"id": "r9", "kind": "river", "name": "无", **_AT, **_RIVER, "model": "not-mapped"},
]
REGISTRY = parse_registry({"areas": SMALL_AREAS, "devices": SMALL_DEVICES + VENDOR_DEVICES})


def decoder(maps: VendorMaps = MAPS) -> Decoder:
    return Decoder(
        REGISTRY,
        max_payload_bytes=16_384,
        future_skew_ms=300_000,
        max_age_ms=30 * 86_400_000,
        vendors=maps,
    )


def decode(topic: str, document: Any) -> Decoded | Rejection:
    payload = document if isinstance(document, bytes) else json.dumps(document).encode()
    return decoder().decode(topic, payload, NOW)


# (device, model, channel, the vendor's document, what our payload says) — the documents are
# those config/vendors.yaml shows in its comments.
SHAPES: list[tuple[str, str, Channel, dict[str, Any], dict[str, Any]]] = [
    (
        "xa1",
        "xa-mj200",
        Channel.TELEMETRY,
        {
            "devSn": "XA2026120001",
            "msgNo": 881,
            "time": "2026-12-05 10:00:00",
            "doorStatus": 1,
            "inNum": 3,
            "outNum": 1,
            "carIn": 0,
            "carOut": 2,
            "batVol": 12400,
        },
        {
            "ts": T0,
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
        "xa1",
        "xa-mj200",
        Channel.EVENT,
        {
            "devSn": "XA2026120001",
            "msgNo": 882,
            "time": "2026-12-05 10:00:03",
            "eventType": "ALARM_FORCE",
            "dir": "IN",
            "openType": 4,
        },
        {
            "ts": T0 + 3000,
            "seq": 882,
            "event": "forced_open",
            "direction": "in",
            "method": "password",
        },
    ),
    (
        "xa1",
        "xa-mj200",
        Channel.STATUS,
        {"devSn": "XA2026120001", "time": "2026-12-05 10:00:00", "state": "ONLINE"},
        {"ts": T0, "online": True},
    ),
    (
        "zk1",
        "zk-gate-v3",
        Channel.TELEMETRY,
        {
            "header": {"sn": "ZK-V3-00417", "timestamp": T0, "seq": 77},
            "body": {
                "door": {"state": "OPENED"},
                "counter": {"pedIn": "5", "pedOut": "2", "vehIn": "1", "vehOut": "0"},
            },
        },
        {
            "ts": T0,
            "seq": 77,
            "door": "open",
            "people_in": 5,
            "people_out": 2,
            "vehicles_in": 1,
            "vehicles_out": 0,
        },
    ),
    (
        "zk1",
        "zk-gate-v3",
        Channel.EVENT,
        {
            "header": {"sn": "ZK-V3-00417", "timestamp": T0 + 3000, "seq": 78},
            "body": {"code": 2003, "passDir": 0, "verify": "PLATE", "carPlate": "湘E·12345"},
        },
        {
            "ts": T0 + 3000,
            "seq": 78,
            "event": "tailgating",
            "direction": "in",
            "method": "plate",
            "plate": "湘E·12345",
        },
    ),
    (
        "sw1",
        "sw-rtu-s2",
        Channel.TELEMETRY,
        {
            "stationId": "SW-S2-0031",
            "collectTime": "2026/12/05 10:00",
            "wl": 20840,
            "rain": "1.5",
            "wt": 46.4,
            "volt": 12.6,
        },
        {
            "ts": T0,
            "water_level_m": 208.4,
            "rainfall_mm": 1.5,
            "water_temp_c": 8.0,
            "battery_v": 12.6,
        },
    ),
    (
        "hb1",
        "hb-wq-m5",
        Channel.TELEMETRY,
        {
            "deviceNo": "HB-M5-0042",
            "ts": T0 // 1000,
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
        {
            "ts": T0,
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
        "ys1",
        "ys-cam-t7",
        Channel.TELEMETRY,
        {
            "camId": "YS-T7-1009",
            "statTime": "2026-12-05T10:00:00+08:00",
            "flow": {"total": 42},
            "avgSpeed": 12.5,
            "occupancy": 0.18,
            "queueLen": 35,
        },
        {
            "ts": T0,
            "vehicle_count": 42,
            "avg_speed_kmh": 45.0,
            "occupancy_pct": 18.0,
            "queue_length_m": 35,
        },
    ),
    (
        "ys1",
        "ys-cam-t7",
        Channel.EVENT,
        {
            "camId": "YS-T7-1009",
            "alarmTime": "2026-12-05T10:00:03.250+08:00",
            "alarmType": "OVERSPEED",
            "speed": 25.0,
            "laneNo": 2,
            "plateInfo": {"plateNo": "湘E12345", "color": "blue"},
            "score": 87,
        },
        {
            "ts": T0 + 3250,
            "event": "speeding",
            "speed_kmh": 90.0,
            "lane": 2,
            "plate": "湘E12345",
            "confidence": 0.87,
        },
    ),
    (
        "ys1",
        "ys-cam-t7",
        Channel.STATUS,
        {"camId": "YS-T7-1009", "alarmTime": "2026-12-05T10:00:00+08:00", "state": "OFFLINE"},
        {"ts": T0, "online": False},
    ),
    (
        "tr1",
        "tr-its-900",
        Channel.TELEMETRY,
        {
            "sn": "TR900-2231",
            "t": "2026-12-05T10:00:00",
            "lanes": [{"no": 1, "cnt": 20}, {"no": 2, "cnt": 17}],
            "sum": {"cnt": 37, "spd": 48.5, "occ": 22.5},
        },
        {"ts": T0, "vehicle_count": 37, "avg_speed_kmh": 48.5, "occupancy_pct": 22.5},
    ),
    (
        "tr1",
        "tr-its-900",
        Channel.EVENT,
        {
            "sn": "TR900-2231",
            "t": "2026-12-05T10:00:03",
            "evt": {"c": 1, "spd": 96, "ln": 1, "plate": "湘E12345", "conf": 0.93},
        },
        {
            "ts": T0 + 3000,
            "event": "speeding",
            "speed_kmh": 96,
            "lane": 1,
            "plate": "湘E12345",
            "confidence": 0.93,
        },
    ),
]


def kind_of(device: str) -> Kind:
    return REGISTRY.devices[device].kind


def channel_map(model: str, channel: Channel) -> ChannelMap:
    return MAPS.models[model].channels[channel]


# --- conversions ------------------------------------------------------------------------


def test_the_named_conversions_are_the_ones_the_file_may_name() -> None:
    assert set(CONVERSIONS) == set(typing.get_args(ConversionName))
    # Each gives a unit some field of ours is in: a conversion without a target is useless.
    assert {c.unit for c in CONVERSIONS.values()} <= set(UNITS.values())


@pytest.mark.parametrize(
    ("name", "given", "expected"),
    [
        ("cm_to_m", 20840, 208.4),
        ("mm_to_m", 208400, 208.4),
        ("cm_to_mm", 1.5, 15.0),
        ("ms_to_kmh", 12.5, 45.0),
        ("mph_to_kmh", 60, 96.56064),
        ("mv_to_v", 12400, 12.4),
        ("percent_from_ratio", 0.18, 18.0),
        ("f_to_c", 212, 100.0),
        ("f_to_c", 32, 0.0),
        ("f_to_c", -40, -40.0),
        ("k_to_c", 273.15, 0.0),
        ("ugl_to_mgl", 62, 0.062),
        ("ls_to_m3s", 125000, 125.0),
    ],
)
def test_every_conversion(name: str, given: float, expected: float) -> None:
    mapping = ChannelMap.model_validate({"fields": {"x": {"path": "v", "convert": name}}})
    assert apply(mapping, {"v": given})["x"] == pytest.approx(expected)


def test_convert_then_scale_then_offset() -> None:
    """A gauge in cm above its zero, whose zero lies 205 m above the datum, halved for show."""
    rule = {"path": "v", "convert": "cm_to_m", "scale": 2, "offset": 205}
    mapping = ChannelMap.model_validate({"fields": {"x": rule}})
    assert apply(mapping, {"v": 150})["x"] == pytest.approx(208.0)


@pytest.mark.parametrize(
    ("kind", "given", "expected"),
    [
        ("integer", "5", 5),
        ("integer", 5, 5),
        ("number", "1.5", 1.5),
        ("number", 2, 2),
        (None, "7", "7"),  # no type: copied as sent, for the schema to judge
    ],
)
def test_numbers_sent_as_text(kind: str | None, given: Any, expected: Any) -> None:
    rule: dict[str, Any] = {"path": "v"} | ({"type": kind} if kind else {})
    result = apply(ChannelMap.model_validate({"fields": {"x": rule}}), {"v": given})["x"]
    assert result == expected and type(result) is type(expected)


@pytest.mark.parametrize("given", ["five", "", "1e999999999x", True, [1], {"a": 1}])
def test_a_value_that_is_no_number_is_named(given: Any) -> None:
    mapping = ChannelMap.model_validate({"fields": {"n": {"path": "a.v", "type": "integer"}}})
    with pytest.raises(MappingError, match=r"n ← a\.v: .* not a"):
        apply(mapping, {"a": {"v": given}})


def test_an_integer_too_large_for_a_float_is_named() -> None:
    mapping = ChannelMap.model_validate({"fields": {"x": {"path": "v", "convert": "cm_to_m"}}})
    with pytest.raises(MappingError, match="out of range"):
        apply(mapping, {"v": 10**400})


# --- the shipped vendor shapes ----------------------------------------------------------


def test_the_shipped_file_maps_two_models_of_each_kind() -> None:
    kinds = [m.kind for m in MAPS.models.values()]
    assert all(kinds.count(k) >= 2 for k in Kind)
    shown = {(model, channel) for _, model, channel, _, _ in SHAPES}
    mapped = {(m.id, c) for m in MAPS.models.values() for c in m.channels}
    assert shown == mapped  # every mapped channel has its example here


@pytest.mark.parametrize(
    ("device", "model", "channel", "document", "expected"),
    SHAPES,
    ids=[f"{m}-{c.value}" for _, m, c, _, _ in SHAPES],
)
def test_each_vendor_shape_reads_as_our_payload(
    device: str, model: str, channel: Channel, document: dict[str, Any], expected: dict[str, Any]
) -> None:
    ours = apply(channel_map(model, channel), document)
    assert ours == pytest.approx(expected)
    assert set(ours) == set(expected)
    schema = schema_for(kind_of(device), channel)
    assert schema is not None
    message = schema.model_validate(ours)
    # Through the decoder as the service runs it: the same message, at the vendor's time.
    result = decode(f"iot/{kind_of(device)}/{device}/{channel}", document)
    assert isinstance(result, Decoded), result
    assert result.message == message and result.ts_ms == expected["ts"]
    assert result.message.model_dump(exclude_none=True) == pytest.approx(expected)


def test_a_device_without_a_mapping_speaks_our_json() -> None:
    ours = {"ts": T0, "ph": 7.1}
    for device in ("r1", "r9"):  # no model; a model the file does not map
        result = decode(f"iot/river/{device}/telemetry", ours)
        assert isinstance(result, Decoded) and result.message.model_dump(exclude_none=True) == ours
    # The vendor's shape from such a device is simply not our payload.
    result = decode("iot/river/r9/telemetry", SHAPES[5][3])
    assert isinstance(result, Rejection) and result.reason is Reason.SCHEMA


def test_a_channel_the_model_does_not_map_is_our_json() -> None:
    """hb-wq-m5 maps telemetry only: its status (e.g. a last will) is ours."""
    result = decode("iot/river/hb1/status", {"online": False, "ts": T0})
    assert isinstance(result, Decoded) and result.message.model_dump(exclude_none=True) == {
        "online": False,
        "ts": T0,
    }


# --- named failures ---------------------------------------------------------------------


def vendor_rejection(topic: str, document: Any) -> str:
    result = decode(topic, document)
    assert isinstance(result, Rejection) and result.reason is Reason.VENDOR_MAPPING, result
    return result.detail


def test_a_word_the_enum_does_not_map_is_rejected_by_name() -> None:
    document = dict(SHAPES[1][3], eventType="ALARM_SMOKE")
    with pytest.raises(MappingError, match="event ← eventType: 'ALARM_SMOKE' is not in the map"):
        apply(channel_map("xa-mj200", Channel.EVENT), document)
    detail = vendor_rejection("iot/gate/xa1/event", document)
    assert detail == "model xa-mj200: event ← eventType: 'ALARM_SMOKE' is not in the map"
    # Numbers and text compare as text; a float or an object is never a key.
    mapping = channel_map("zk-gate-v3", Channel.EVENT)
    base = SHAPES[4][3]
    assert apply(mapping, {**base, "body": {"code": "2001"}})["event"] == "forced_open"
    for code in (2001.0, {"x": 1}, True):
        with pytest.raises(MappingError, match="is not in the map"):
            apply(mapping, {**base, "body": {"code": code}})


def test_a_missing_path_is_rejected_by_name_unless_optional_or_defaulted() -> None:
    document = dict(SHAPES[0][3])
    del document["inNum"]
    detail = vendor_rejection("iot/gate/xa1/telemetry", document)
    assert detail == "model xa-mj200: people_in ← inNum: not in the message"
    # carIn has a default, batVol is optional; a JSON null counts as missing.
    lean = {k: v for k, v in SHAPES[0][3].items() if k not in ("carIn", "batVol")}
    ours = apply(channel_map("xa-mj200", Channel.TELEMETRY), {**lean, "msgNo": None})
    assert ours["vehicles_in"] == 0 and "battery_v" not in ours and "seq" not in ours
    # A list index past the end, or into an object, is a missing path too.
    hb = channel_map("hb-wq-m5", Channel.TELEMETRY)
    assert "tp_mgl" not in apply(hb, {**SHAPES[6][3], "data": SHAPES[6][3]["data"][:4]})
    assert "ph" not in apply(hb, {**SHAPES[6][3], "data": {"0": 7}})
    assert apply(hb, {**SHAPES[6][3], "data": {"0": {"v": 7}}})["ph"] == 7


@pytest.mark.parametrize(
    ("model", "channel", "time", "why"),
    [
        ("xa-mj200", Channel.TELEMETRY, "2026-12-05T10:00:00", "is not %Y-%m-%d %H:%M:%S"),
        ("xa-mj200", Channel.TELEMETRY, 1796436000, "is not a time text"),
        ("xa-mj200", Channel.TELEMETRY, "2026-13-05 10:00:00", "is not %Y-%m-%d"),
        ("ys-cam-t7", Channel.TELEMETRY, "yesterday", "is not iso8601"),
        ("ys-cam-t7", Channel.TELEMETRY, "2026-12-05T10:00:00", "has no UTC offset"),
        ("hb-wq-m5", Channel.TELEMETRY, "soon", "is not a number"),
        ("hb-wq-m5", Channel.TELEMETRY, True, "is not a number"),
        ("hb-wq-m5", Channel.TELEMETRY, 1e308, "is not epoch_s"),
        ("zk-gate-v3", Channel.TELEMETRY, None, "not in the message"),
    ],
)
def test_a_bad_timestamp_is_rejected_by_name(
    model: str, channel: Channel, time: Any, why: str
) -> None:
    mapping = channel_map(model, channel)
    assert mapping.ts is not None
    path = mapping.ts.path
    document = next(d for _, m, c, d, _ in SHAPES if m == model and c == channel)
    document = json.loads(json.dumps(document))
    target = document
    *parents, leaf = path.split(".")
    for key in parents:
        target = target[key]
    target[leaf] = time
    with pytest.raises(MappingError, match=f"^ts ← {path}: .*{why}"):
        apply(mapping, document)
    device = next(d for d, m, c, _, _ in SHAPES if m == model)
    detail = vendor_rejection(f"iot/{kind_of(device)}/{device}/{channel}", document)
    assert detail.startswith(f"model {model}: ts ← {path}: ")


@pytest.mark.parametrize(
    ("rule", "time", "expected"),
    [
        ({"format": "epoch_s"}, 1796436000.5, T0 + 500),
        ({"format": "epoch_s"}, "1796436000", T0),
        ({"format": "epoch_ms"}, "1796436000250", T0 + 250),
        ({"format": "epoch_ms"}, 1796436000250.4, T0 + 250),
        ({"format": "iso8601"}, "2026-12-05T02:00:00Z", T0),
        ({"format": "iso8601", "tz": "Asia/Shanghai"}, "2026-12-05T03:00:00+01:00", T0),
        ({"format": "%d.%m.%Y %H:%M %z"}, "05.12.2026 10:00 +0800", T0),
        ({"format": "%Y%m%d%H%M%S", "tz": "Asia/Shanghai"}, "20261205100000", T0),
        ({"format": "%Y-%m-%d %H:%M:%S", "tz": "Europe/Berlin"}, "2026-12-05 03:00:00", T0),
    ],
)
def test_timestamp_formats(rule: dict[str, Any], time: Any, expected: int) -> None:
    mapping = ChannelMap.model_validate({"ts": {"path": "when", **rule}})
    assert apply(mapping, {"when": time}) == {"ts": expected}


def test_what_the_mapping_makes_is_judged_by_our_schema_and_says_so() -> None:
    document = dict(SHAPES[5][3], wl=9_999_999)  # 99 999.99 m: above any river
    result = decode("iot/river/sw1/telemetry", document)
    assert isinstance(result, Rejection) and result.reason is Reason.OUT_OF_RANGE
    assert result.detail.endswith("(read through model sw-rtu-s2)")
    result = decode("iot/river/sw1/telemetry", dict(SHAPES[5][3], wl=float("nan")))
    assert isinstance(result, Rejection) and result.reason is Reason.NOT_FINITE


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{nope", Reason.INVALID_JSON),
        (b'{"time": "\xff"}', Reason.NOT_UTF8),
        (b"[" * 40 + b"]" * 40, Reason.TOO_DEEP),
        (b"x" * 20_000, Reason.TOO_LARGE),
        (b"[]", Reason.VENDOR_MAPPING),
        (b"17", Reason.VENDOR_MAPPING),
    ],
)
def test_a_vendor_device_bytes_are_judged_as_ours(payload: bytes, reason: Reason) -> None:
    result = decode("iot/gate/xa1/telemetry", payload)
    assert isinstance(result, Rejection) and result.reason is reason


# --- the file ---------------------------------------------------------------------------


def one_model(**changes: Any) -> dict[str, Any]:
    """The file with one small river model, changed as given."""
    model: dict[str, Any] = {
        "id": "m1",
        "kind": "river",
        "channels": {
            "telemetry": {
                "ts": {"path": "t", "format": "epoch_s"},
                "fields": {"water_level_m": {"path": "wl", "convert": "cm_to_m"}},
            }
        },
    }
    return {"models": [model | changes]}


def telemetry(**fields: Any) -> dict[str, Any]:
    return {"telemetry": {"ts": {"path": "t", "format": "epoch_s"}, "fields": fields}}


BAD_FILES: list[tuple[Any, str, str, str]] = [
    ("just text", "(top)", "(file)", "must be a mapping"),
    ({"models": {}}, "models", "(section)", "must be a list"),
    ({"modles": []}, "(top)", "modles", "unknown section"),
    (one_model(colour="red"), "models[0] (id=m1)", "colour", "Extra inputs"),
    (one_model(id="bad id"), "models[0] (id=bad id)", "id", "pattern"),
    (one_model(kind="bus"), "models[0] (id=m1)", "kind", "gate"),
    (one_model(channels={}), "models[0] (id=m1)", "channels", "at least 1"),
    (one_model(channels={"video": {}}), "models[0] (id=m1)", "channels.video.[key]", "telemetry"),
    (
        one_model(channels=telemetry(water_level_m={"path": "wl", "convert": "inch_to_m"})),
        "models[0] (id=m1)",
        "channels.telemetry.fields.water_level_m.convert",
        "cm_to_m",
    ),
    (
        one_model(channels=telemetry(rainfall_mm={"path": "r", "convert": "cm_to_m"})),
        "models[0] (id=m1)",
        "channels.telemetry.fields.rainfall_mm.convert",
        "gives m, rainfall_mm is in mm",
    ),
    (
        one_model(channels=telemetry(level={"path": "wl"})),
        "models[0] (id=m1)",
        "channels.telemetry.fields.level",
        "not a field of ours",
    ),
    (
        one_model(channels=telemetry(ts={"path": "t"})),
        "models[0] (id=m1)",
        "channels.telemetry.fields.ts",
        "channel's ts",
    ),
    (
        one_model(channels=telemetry(ph={"path": "a..b"})),
        "models[0] (id=m1)",
        "channels.telemetry.fields.ph.path",
        "none empty",
    ),
    (
        one_model(channels=telemetry(ph={"path": 5})),
        "models[0] (id=m1)",
        "channels.telemetry.fields.ph.path",
        "valid string",
    ),
    (
        one_model(channels=telemetry(ph={"path": "p", "map": {1.5: 7}})),
        "models[0] (id=m1)",
        "channels.telemetry.fields.ph.map.1.5.[key]",
        "an enum key is",
    ),
    (
        one_model(channels=telemetry(ph={"optional": True})),
        "models[0] (id=m1)",
        "channels.telemetry.fields.ph",
        "needs a path, a default",
    ),
    (
        one_model(channels=telemetry(ph={"path": "p", "scale": "big"})),
        "models[0] (id=m1)",
        "channels.telemetry.fields.ph.scale",
        "valid number",
    ),
    (
        one_model(channels=telemetry(ph={"path": "p", "map": {"a": 7}, "scale": 2})),
        "models[0] (id=m1)",
        "channels.telemetry.fields.ph",
        "map translates words",
    ),
    (
        one_model(channels=telemetry(ph={"path": "p", "default": "seven"})),
        "models[0] (id=m1)",
        "channels.telemetry.fields.ph.default",
        "'seven': Input should be a valid number",
    ),
    (
        one_model(channels=telemetry(ph={"path": "p", "default": 15})),
        "models[0] (id=m1)",
        "channels.telemetry.fields.ph.default",
        "less than or equal to 14",
    ),
    (
        one_model(channels={"telemetry": {"fields": {"ph": {"path": "p"}}}}),
        "models[0] (id=m1)",
        "channels.telemetry.ts",
        "required by our payload",
    ),
    (
        one_model(channels={"event": telemetry(ph={"path": "p"})["telemetry"]}),
        "models[0] (id=m1)",
        "channels.event",
        "a river device has no event",
    ),
    (
        one_model(
            channels={"telemetry": {"ts": {"path": "t", "format": "iso8601", "tz": "Mars/Base"}}}
        ),
        "models[0] (id=m1)",
        "channels.telemetry.ts",
        "no time zone 'Mars/Base'",
    ),
    (
        one_model(channels={"telemetry": {"ts": {"path": "t", "format": "yyyy-MM-dd"}}}),
        "models[0] (id=m1)",
        "channels.telemetry.ts",
        "neither epoch_s",
    ),
    (
        one_model(channels={"telemetry": {"ts": {"path": "t", "format": "%Y-%m-%d %H:%M"}}}),
        "models[0] (id=m1)",
        "channels.telemetry.ts",
        "name the time zone",
    ),
    (
        one_model(channels={"telemetry": {"ts": {"path": "t", "format": "%Y-%m-%d %Q"}}}),
        "models[0] (id=m1)",
        "channels.telemetry.ts",
        "does not read back",
    ),
    (
        one_model(channels={"telemetry": {"ts": {"path": "t", "format": "epoch_ms", "tz": "UTC"}}}),
        "models[0] (id=m1)",
        "channels.telemetry.ts",
        "takes no tz",
    ),
    (
        {"models": [one_model()["models"][0], one_model()["models"][0]]},
        "models[1] (id=m1)",
        "id",
        "duplicate model id",
    ),
]

GATE_EVENT_CASES: list[tuple[dict[str, Any], str, str]] = [
    (
        {"event": {"path": "e", "map": {"FORCE": "forced_opn"}}},
        "channels.event.fields.event.map.FORCE",
        "'forced_opn': Input should be 'pass'",
    ),
    (
        {"event": {"path": "e"}, "plate": {"path": "car.cph"}},
        "channels.event.fields.plate.path",
        "must contain 'plate'",
    ),
    (
        {"event": {"path": "e"}, "lane": {"path": "l"}},
        "channels.event.fields.lane",
        "not a field of ours",
    ),
    ({"plate": {"path": "plateNo"}}, "channels.event.fields.event", "required by our payload"),
]


@pytest.mark.parametrize(("data", "entry", "field", "message"), BAD_FILES)
def test_a_bad_file_names_file_entry_and_field(
    data: Any, entry: str, field: str, message: str
) -> None:
    with pytest.raises(VendorMapError) as caught:
        parse_vendor_maps(data, "vendors.yaml")
    found = [(p.file, p.entry, p.field) for p in caught.value.problems]
    assert ("vendors.yaml", entry, field) in found, caught.value.problems
    problem = caught.value.problems[found.index(("vendors.yaml", entry, field))]
    assert message in problem.message, problem
    assert f"vendors.yaml: {entry}: {field}: " in str(caught.value)


@pytest.mark.parametrize(("fields", "field", "message"), GATE_EVENT_CASES)
def test_a_bad_gate_event_mapping_is_named(
    fields: dict[str, Any], field: str, message: str
) -> None:
    channel = {"ts": {"path": "t", "format": "epoch_ms"}, "fields": fields}
    data = {"models": [{"id": "g", "kind": "gate", "channels": {"event": channel}}]}
    with pytest.raises(VendorMapError) as caught:
        parse_vendor_maps(data, "v.yaml")
    by_field = {p.field: p for p in caught.value.problems}
    assert field in by_field, caught.value.problems
    assert message in by_field[field].message and by_field[field].entry == "models[0] (id=g)"


def test_every_problem_is_listed_at_once() -> None:
    data = {
        "models": [one_model(kind="bus")["models"][0], one_model(id="m2", colour=1)["models"][0]]
    }
    with pytest.raises(VendorMapError) as caught:
        parse_vendor_maps(data, "v.yaml")
    assert {p.entry for p in caught.value.problems} == {"models[0] (id=m1)", "models[1] (id=m2)"}


def test_loading_the_file(tmp_path: Path) -> None:
    assert len(load_vendor_maps(tmp_path / "absent.yaml")) == 0  # no file: no mapping
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert len(load_vendor_maps(empty)) == 0
    broken = tmp_path / "broken.yaml"
    broken.write_text("models: [\n")
    with pytest.raises(VendorMapError) as caught:
        load_vendor_maps(broken)
    assert caught.value.problems[0].file == str(broken)
    assert caught.value.problems[0].field == "(yaml)"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(one_model(kind="bus")))
    with pytest.raises(VendorMapError, match=f"{bad}: models\\[0\\] \\(id=m1\\): kind: "):
        load_vendor_maps(bad)


def test_a_device_of_a_model_mapped_for_another_kind_is_named() -> None:
    wrong = parse_registry(
        {
            "areas": SMALL_AREAS,
            "devices": [{**VENDOR_DEVICES[0], "id": "oops", "model": "sw-rtu-s2"}],
        }
    )
    with pytest.raises(VendorMapError) as caught:
        check_devices(MAPS, wrong, "config/vendors.yaml")
    (problem,) = caught.value.problems
    assert problem.entry == "models[2] (id=sw-rtu-s2)" and problem.field == "kind"
    assert "device oops" in problem.message and "gate" in problem.message
    check_devices(MAPS, REGISTRY, "config/vendors.yaml")  # the right kinds: fine
    # A decoder built without that check still refuses, by name, never misreads.
    lax = Decoder(wrong, max_payload_bytes=1024, future_skew_ms=0, max_age_ms=10**12, vendors=MAPS)
    result = lax.decode("iot/gate/oops/telemetry", b"{}", NOW)
    assert isinstance(result, Rejection) and result.reason is Reason.VENDOR_MAPPING


def test_a_gateway_station_of_a_mapped_model_is_named() -> None:
    """A station with a protocol reaches us through its gateway, in our JSON."""
    station = {
        **VENDOR_DEVICES[2],
        "protocol": "hj212",
        "mn": "43050310000201",
        "password": "123456",
    }
    wrong = parse_registry({"areas": SMALL_AREAS, "devices": [station]})
    with pytest.raises(VendorMapError) as caught:
        check_devices(MAPS, wrong, "config/vendors.yaml")
    (problem,) = caught.value.problems
    assert problem.entry == "models[2] (id=sw-rtu-s2)" and problem.field == "channels.telemetry"
    assert "sw1 reports through the hj212 gateway" in problem.message


def test_the_service_refuses_a_broken_file_and_takes_a_missing_one(tmp_path: Path) -> None:
    bad = tmp_path / "vendors.yaml"
    bad.write_text(yaml.safe_dump(one_model(kind="bus")))
    with pytest.raises(StartRefused, match="models\\[0\\] \\(id=m1\\): kind"):
        vendor_maps(Settings(vendors=bad, data_dir=tmp_path), REGISTRY)
    wrong = parse_registry(
        {"areas": SMALL_AREAS, "devices": [{**VENDOR_DEVICES[0], "model": "sw-rtu-s2"}]}
    )
    with pytest.raises(StartRefused, match="device xa1"):
        vendor_maps(Settings(vendors=VENDORS_FILE, data_dir=tmp_path), wrong)
    missing = Settings(vendors=tmp_path / "none.yaml", data_dir=tmp_path)
    assert len(vendor_maps(missing, REGISTRY)) == 0
    assert len(vendor_maps(Settings(vendors=VENDORS_FILE, data_dir=tmp_path), REGISTRY)) == 6


def test_the_docs_example_loads() -> None:
    text = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    section = text.split("## Vendor JSON mappings", 1)[1].split("\n## ", 1)[0]
    example = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    maps = parse_vendor_maps(yaml.safe_load(example), "docs/operations.md")
    assert len(maps) >= 1
    for name in CONVERSIONS:  # every conversion is documented
        assert f"`{name}`" in section, name


# --- fuzz -------------------------------------------------------------------------------

LEAF = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30)
    | st.sampled_from(["1", "2026-12-05 10:00:00", "ONLINE", "ALARM_FORCE", "1e400", "nan", "-0"])
)
JSON = st.recursive(
    LEAF,
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.dictionaries(
            st.sampled_from(
                ["time", "t", "ts", "data", "body", "header", "0", "v", "evt", "c", "wl", "sum"]
            )
            | st.text(max_size=8),
            inner,
            max_size=6,
        )
    ),
    max_leaves=25,
)
ALL_MAPS = [(m.id, c, cm) for m in MAPS.models.values() for c, cm in m.channels.items()]


KEEP = "<keep the vendor's value>"


def leaves_replaced(document: Any, values: Any) -> Any:
    """``document`` with each leaf replaced by the next random value (its shape kept)."""
    if isinstance(document, dict):
        return {k: leaves_replaced(v, values) for k, v in document.items()}
    if isinstance(document, list):
        return [leaves_replaced(v, values) for v in document]
    value = next(values)
    return document if value == KEEP else value


@settings(deadline=None, max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(range(len(ALL_MAPS))), JSON)
def test_apply_over_random_json_raises_only_its_named_error(index: int, document: Any) -> None:
    _, _, mapping = ALL_MAPS[index]
    try:
        result = apply(mapping, document)
    except MappingError as e:
        assert str(e)
    else:
        assert isinstance(result, dict)


@settings(deadline=None, max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(range(len(SHAPES))),
    st.lists(st.just(KEEP) | LEAF | st.lists(LEAF, max_size=2), min_size=12, max_size=12),
)
def test_vendor_shapes_with_random_values_are_decoded_or_rejected(
    index: int, values: list[Any]
) -> None:
    device, model, channel, document, _ = SHAPES[index]
    mangled = leaves_replaced(document, itertools.cycle(values))
    with contextlib.suppress(MappingError):  # the only exception apply may raise
        apply(channel_map(model, channel), mangled)
    payload = json.dumps(mangled, allow_nan=True).encode()
    result = decoder().decode(f"iot/{kind_of(device)}/{device}/{channel}", payload, NOW)
    if isinstance(result, Rejection):
        assert result.reason not in (Reason.WRITE_REJECTED, Reason.INTERNAL_ERROR)
        assert isinstance(result.detail, str) and len(result.detail) <= 400


def mutated(data: Any, choices: Any) -> Any:
    """``data`` with each value replaced, kept, or its keys' values swapped for random JSON."""
    choice = next(choices)
    if choice is not KEEP and not isinstance(choice, list | dict):
        return choice
    if isinstance(data, dict):
        return {k: mutated(v, choices) for k, v in data.items()}
    if isinstance(data, list):
        return [mutated(v, choices) for v in data]
    return data


FILE_DATA = yaml.safe_load(VENDORS_FILE.read_text(encoding="utf-8"))  # mutated() copies


@settings(deadline=None, max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.just(KEEP) | st.just(KEEP) | st.just(KEEP) | LEAF, min_size=17, max_size=17))
def test_a_mangled_file_is_refused_by_name_never_with_another_error(choices: list[Any]) -> None:
    try:
        parse_vendor_maps(mutated(FILE_DATA, itertools.cycle(choices)), "v.yaml")
    except VendorMapError as e:
        assert all(p.file == "v.yaml" for p in e.problems)
