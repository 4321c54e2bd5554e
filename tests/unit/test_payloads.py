"""Every class of invalid payload maps to its named reason; valid ones pass unchanged."""

import json

import pytest

from devices.kinds import Channel, Kind
from devices.payloads import GateEvent, RiverTelemetry, Status, schema_for
from devices.registry import parse_registry
from ingest.intake.decode import Decoded, Decoder, Reason, Rejection
from tests.unit.smallcity import SMALL_AREAS, SMALL_DEVICES

NOW = 1_795_000_000_000  # 2026-11-19T...Z, epoch ms

REGISTRY = parse_registry({"areas": SMALL_AREAS, "devices": SMALL_DEVICES})


def decoder() -> Decoder:
    return Decoder(
        REGISTRY, max_payload_bytes=1024, future_skew_ms=300_000, max_age_ms=30 * 86_400_000
    )


def decode(topic: str, payload: bytes | str | dict[str, object]) -> Decoded | Rejection:
    if isinstance(payload, dict):
        payload = json.dumps(payload)
    if isinstance(payload, str):
        payload = payload.encode()
    return decoder().decode(topic, payload, NOW)


def reason(topic: str, payload: bytes | str | dict[str, object]) -> Reason:
    result = decode(topic, payload)
    assert isinstance(result, Rejection), f"expected a rejection, got {result}"
    return result.reason


def test_valid_messages_of_each_kind() -> None:
    cases = [
        ("iot/river/r1/telemetry", {"ts": NOW, "seq": 1, "water_level_m": 208.1, "ph": 7}),
        (
            "iot/gate/g1/telemetry",
            {
                "ts": NOW,
                "door": "closed",
                "people_in": 1,
                "people_out": 0,
                "vehicles_in": 0,
                "vehicles_out": 2,
            },
        ),
        ("iot/gate/g1/event", {"ts": NOW, "event": "pass", "direction": "in", "method": "face"}),
        ("iot/road/d1/telemetry", {"ts": NOW, "vehicle_count": 12, "avg_speed_kmh": 41.5}),
        ("iot/road/d1/event", {"ts": NOW, "event": "accident", "lane": 1, "confidence": 0.9}),
        ("iot/road/d1/status", {"online": True, "ts": NOW}),
    ]
    for topic, payload in cases:
        result = decode(topic, payload)
        assert isinstance(result, Decoded), (topic, result)
        assert result.ts_ms == NOW
        assert result.device.id == topic.split("/")[2]


def test_rfc3339_timestamp_and_ignored_extras() -> None:
    result = decode(
        "iot/river/r1/telemetry", {"ts": "2026-11-18T18:06:40+08:00", "ph": 7.2, "firmware": "1.2"}
    )
    assert isinstance(result, Decoded)
    assert result.ts_ms == 1_794_996_400_000
    assert "firmware" not in result.message.__dict__


def test_int_becomes_float_so_field_types_never_conflict() -> None:
    result = decode("iot/river/r1/telemetry", {"ts": NOW, "water_level_m": 208})
    assert isinstance(result, Decoded)
    assert isinstance(result.message, RiverTelemetry)
    assert type(result.message.water_level_m) is float


def test_status_without_ts_takes_receive_time() -> None:
    result = decode("iot/gate/g1/status", {"online": False})
    assert isinstance(result, Decoded)
    assert isinstance(result.message, Status)
    assert result.ts_ms == NOW


@pytest.mark.parametrize(
    ("topic", "payload", "expected"),
    [
        ("iot/river/r1/telemetry", "{not json", Reason.INVALID_JSON),
        ("iot/river/r1/telemetry", b"\xff\xfe\x00", Reason.NOT_UTF8),
        ("iot/river/r1/telemetry", "", Reason.INVALID_JSON),
        ("iot/river/r1/telemetry", '{"ts": 1795000000000, "ph": NaN}', Reason.NOT_FINITE),
        ("iot/river/r1/telemetry", '{"ts": 1795000000000, "ph": Infinity}', Reason.NOT_FINITE),
        ("iot/river/r1/telemetry", '{"ts": 1795000000000, "ph": 1e999}', Reason.NOT_FINITE),
        ("iot/river/r1/telemetry", {"ts": NOW, "ph": 14.01}, Reason.OUT_OF_RANGE),
        ("iot/river/r1/telemetry", {"ts": NOW, "do_mgl": -0.1}, Reason.OUT_OF_RANGE),
        (
            "iot/gate/g1/telemetry",
            {
                "ts": NOW,
                "door": "closed",
                "people_in": -1,
                "people_out": 0,
                "vehicles_in": 0,
                "vehicles_out": 0,
            },
            Reason.OUT_OF_RANGE,
        ),
        ("iot/river/r1/telemetry", {"ts": NOW, "ph": "7"}, Reason.SCHEMA),
        ("iot/river/r1/telemetry", {"ts": NOW}, Reason.SCHEMA),
        ("iot/river/r1/telemetry", {"ph": 7}, Reason.SCHEMA),
        ("iot/river/r1/telemetry", "[1, 2]", Reason.SCHEMA),
        ("iot/river/r1/telemetry", {"ts": True, "ph": 7}, Reason.SCHEMA),
        ("iot/river/r1/telemetry", {"ts": "yesterday", "ph": 7}, Reason.SCHEMA),
        ("iot/gate/g1/event", {"ts": NOW, "event": "party"}, Reason.SCHEMA),
        (
            "iot/gate/g1/telemetry",
            {
                "ts": NOW,
                "door": "ajar",
                "people_in": 0,
                "people_out": 0,
                "vehicles_in": 0,
                "vehicles_out": 0,
            },
            Reason.SCHEMA,
        ),
        ("iot/gate/g1/status", {"online": "yes"}, Reason.SCHEMA),
        ("iot/river/r1/telemetry", {"ts": NOW + 301_000, "ph": 7}, Reason.FUTURE_TIMESTAMP),
        ("iot/river/r1/telemetry", {"ts": NOW - 31 * 86_400_000, "ph": 7}, Reason.STALE_TIMESTAMP),
        ("iot/river/nobody/telemetry", {"ts": NOW, "ph": 7}, Reason.UNKNOWN_DEVICE),
        ("iot/gate/r1/telemetry", {"ts": NOW, "ph": 7}, Reason.KIND_MISMATCH),
        ("iot/river/r1/event", {"ts": NOW, "event": "pass"}, Reason.BAD_TOPIC),
        ("iot/river/r1/telemetry", {"ts": NOW, "ph": 7, "pad": "x" * 2000}, Reason.TOO_LARGE),
        ("iot/river/r1/weather", {"ts": NOW, "ph": 7}, Reason.BAD_TOPIC),
    ],
)
def test_each_class_of_bad_input_has_its_reason(
    topic: str, payload: bytes | str | dict[str, object], expected: Reason
) -> None:
    assert reason(topic, payload) is expected


def test_ts_at_the_edges_of_the_window_is_accepted() -> None:
    assert isinstance(decode("iot/river/r1/telemetry", {"ts": NOW + 300_000, "ph": 7}), Decoded)
    assert isinstance(
        decode("iot/river/r1/telemetry", {"ts": NOW - 30 * 86_400_000, "ph": 7}), Decoded
    )


def test_schema_table_covers_every_kind_and_channel_that_exists() -> None:
    assert schema_for(Kind.GATE, Channel.EVENT) is GateEvent
    assert schema_for(Kind.RIVER, Channel.EVENT) is None
    for kind in Kind:
        assert schema_for(kind, Channel.STATUS) is Status
        assert schema_for(kind, Channel.TELEMETRY) is not None
