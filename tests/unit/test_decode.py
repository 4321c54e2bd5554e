"""The decoder's input hardening: nesting depth, key count, UTF-8, string caps, topic cache."""

import json
from typing import Any

import pytest

from devices.payloads import SCHEMAS, Status
from ingest.intake.decode import (
    MAX_JSON_DEPTH,
    MAX_JSON_KEYS,
    Decoded,
    Decoder,
    Reason,
    Rejection,
    structure_problem,
)
from tests.unit.test_payloads import NOW, REGISTRY

RIVER = "iot/river/r1/telemetry"
STATUS = "iot/gate/g1/status"
HEAD = b'{"ts": 1795000000000, "ph": 7'  # a valid river reading, left open for extras


def big_decoder(**limits: int) -> Decoder:
    """Room for the long payloads these tests need; the size cap is tested elsewhere."""
    return Decoder(
        REGISTRY,
        max_payload_bytes=1 << 20,
        future_skew_ms=300_000,
        max_age_ms=30 * 86_400_000,
        **limits,
    )


def decode(payload: bytes, topic: str = RIVER, **limits: int) -> Decoded | Rejection:
    return big_decoder(**limits).decode(topic, payload, NOW)


def reason_of(payload: bytes, topic: str = RIVER, **limits: int) -> Reason | None:
    """The rejection's reason, or None when the message is accepted."""
    result = decode(payload, topic, **limits)
    return result.reason if isinstance(result, Rejection) else None


def nested(depth: int) -> bytes:
    """A river reading whose ignored extra nests arrays to ``depth`` levels in all."""
    inner = depth - 1  # the top-level object is the first level
    return HEAD + b', "x": ' + b"[" * inner + b"]" * inner + b"}"


def nested_objects(depth: int) -> bytes:
    """The same with objects: ``{"a": {"a": ... 1}}``."""
    value = "1"
    for _ in range(depth - 1):
        value = '{"a": ' + value + "}"
    return HEAD + f', "x": {value}}}'.encode()


def with_keys(total: int) -> bytes:
    """A river reading with ``total`` object keys in all (ts and ph included)."""
    extras = ", ".join(f'"k{i}": 0' for i in range(total - 2))
    return HEAD + (b", " + extras.encode() if extras else b"") + b"}"


# Depth


def test_depth_at_the_limit_is_accepted_and_one_more_is_too_deep() -> None:
    assert MAX_JSON_DEPTH == 16
    assert reason_of(nested(MAX_JSON_DEPTH)) is None
    assert reason_of(nested(MAX_JSON_DEPTH + 1)) is Reason.TOO_DEEP
    assert reason_of(nested_objects(MAX_JSON_DEPTH)) is None
    assert reason_of(nested_objects(MAX_JSON_DEPTH + 1)) is Reason.TOO_DEEP


def test_depth_limit_is_configurable_and_counts_mixed_brackets() -> None:
    mixed = HEAD + b', "x": [{"a": [1]}]}'  # depth 4
    assert reason_of(mixed, max_json_depth=4) is None
    assert reason_of(mixed, max_json_depth=3) is Reason.TOO_DEEP
    # Wide but shallow: many brackets, depth 3.
    wide = HEAD + b', "x": [' + b",".join([b"[]"] * 500) + b"]}"
    assert reason_of(wide, max_json_depth=3) is None
    assert reason_of(wide, max_json_depth=2) is Reason.TOO_DEEP


def test_brackets_inside_strings_do_not_count() -> None:
    text = json.dumps({"ts": NOW, "ph": 7, "note": "[{" * 200, "k[": "]]}}"}).encode()
    assert reason_of(text) is None
    # An escaped quote does not end the string; an escaped backslash before a quote does.
    escaped = HEAD + b', "note": "\\"' + b"[" * 50 + b'"}'
    assert reason_of(escaped) is None
    backslash_then_end = HEAD + b', "note": "\\\\", "x": ' + b"[" * 20 + b"]" * 20 + b"}"
    assert reason_of(backslash_then_end) is Reason.TOO_DEEP


def test_unclosed_deep_nesting_is_too_deep_not_just_invalid() -> None:
    assert reason_of(HEAD + b', "x": ' + b"[" * 10_000) is Reason.TOO_DEEP
    assert reason_of(b"[" * 17) is Reason.TOO_DEEP
    assert reason_of(b"[" * 16) is Reason.INVALID_JSON
    # Brackets after an unterminated string are inside it.
    assert reason_of(HEAD + b', "x": "' + b"[" * 100) is Reason.INVALID_JSON


def test_structure_problem_gives_the_reason_and_nothing_for_ordinary_payloads() -> None:
    ordinary = json.dumps({"ts": "2026-11-18T18:06:40+08:00", "ph": 7}).encode()
    assert structure_problem(ordinary, 16, 128) is None
    deep = structure_problem(b"[" * 20 + b"]" * 20, 16, 128)
    assert deep is not None and deep.reason is Reason.TOO_DEEP
    assert structure_problem(b"[" * 16 + b"]" * 16, 16, 128) is None


# Key count


def test_key_count_at_the_limit_is_accepted_and_one_more_is_rejected() -> None:
    assert MAX_JSON_KEYS == 128
    assert reason_of(with_keys(MAX_JSON_KEYS)) is None
    result = decode(with_keys(MAX_JSON_KEYS + 1))
    assert isinstance(result, Rejection)
    assert result.reason is Reason.TOO_MANY_KEYS
    assert "129" in result.detail


def test_keys_are_counted_across_nested_objects_and_duplicates() -> None:
    inner = ", ".join(f'"n{i}": 0' for i in range(7))
    payload = HEAD + b', "x": {' + inner.encode() + b"}}"  # ts, ph, x and 7 inside: 10
    assert reason_of(payload, max_json_keys=10) is None
    assert reason_of(payload, max_json_keys=9) is Reason.TOO_MANY_KEYS
    duplicates = HEAD + b', "ph": 7' * 20 + b"}"  # 22 keys, 19 of them the same
    assert reason_of(duplicates, max_json_keys=21) is Reason.TOO_MANY_KEYS
    assert reason_of(duplicates, max_json_keys=22) is None


def test_colons_inside_strings_are_not_keys() -> None:
    payload = json.dumps(
        {"ts": "2026-11-18T08:00:00+00:00", "ph": 7, "note": ":" * 500, "a:b": "c:d"}
    ).encode()
    assert reason_of(payload, max_json_keys=4) is None
    assert reason_of(payload, max_json_keys=3) is Reason.TOO_MANY_KEYS


# UTF-8


@pytest.mark.parametrize(
    "payload",
    [
        b'{"online": true, "reason": "a\xffb"}',  # never valid in UTF-8
        b'{"online": true, "x\xfe": 1}',  # in a key
        b'{"online": true, "reason": "\xc0\xaf"}',  # overlong "/"
        b'{"online": true, "reason": "\xed\xa0\x80"}',  # a surrogate, encoded
        b'{"online": true, "reason": "\xe6\xb0"}',  # a three-byte character cut short
        b'{"online": true} \xff',  # after the document
        b"\xff\xfe{}",  # UTF-16 byte order mark
    ],
)
def test_bytes_that_are_not_utf8_have_their_own_reason(payload: bytes) -> None:
    result = decode(payload, STATUS)
    assert isinstance(result, Rejection)
    assert result.reason is Reason.NOT_UTF8
    assert result.detail.startswith("byte ")


def test_utf8_text_and_escapes_that_are_fine_or_merely_bad_json() -> None:
    chinese = json.dumps({"online": False, "reason": "断电" * 32}, ensure_ascii=False).encode()
    result = decode(chinese, STATUS)
    assert isinstance(result, Decoded)
    assert isinstance(result.message, Status)
    assert result.message.reason == "断电" * 32  # 64 characters, 192 bytes: the cap is chars
    # Valid UTF-8 that is not valid JSON stays invalid_json.
    assert reason_of(b'{"online": true, "reason": "\\ud800"}', STATUS) is Reason.INVALID_JSON
    assert reason_of(b'\xef\xbb\xbf{"online": true}', STATUS) is Reason.INVALID_JSON  # BOM
    assert reason_of(b'{"online": true, "reason": "a\x00"}', STATUS) is Reason.INVALID_JSON


# Strings


def string_fields() -> list[tuple[type[Any], str, dict[str, Any]]]:
    """Every payload field that accepts a JSON string, with its JSON-schema branch."""
    found = []
    for model in set(SCHEMAS.values()):
        for name, prop in model.model_json_schema()["properties"].items():
            for branch in prop.get("anyOf", [prop]):
                if branch.get("type") == "string":
                    found.append((model, name, branch))
    return found


def test_every_string_field_is_capped_or_an_enum() -> None:
    fields = string_fields()
    assert {name for _, name, _ in fields} >= {"reason", "plate", "event", "door"}
    for model, name, branch in fields:
        assert "maxLength" in branch or "enum" in branch, f"{model.__name__}.{name} is uncapped"


# A valid payload per schema, to which one field at a time is set wrong.
VALID: dict[str, tuple[str, dict[str, Any]]] = {
    "GateTelemetry": (
        "iot/gate/g1/telemetry",
        {
            "ts": NOW,
            "door": "open",
            "people_in": 0,
            "people_out": 0,
            "vehicles_in": 0,
            "vehicles_out": 0,
        },
    ),
    "GateEvent": ("iot/gate/g1/event", {"ts": NOW, "event": "pass"}),
    "RiverTelemetry": (RIVER, {"ts": NOW, "ph": 7}),
    "RoadTelemetry": ("iot/road/d1/telemetry", {"ts": NOW, "vehicle_count": 1}),
    "RoadEvent": ("iot/road/d1/event", {"ts": NOW, "event": "accident"}),
    "Status": (STATUS, {"online": True}),
}


def test_every_string_field_rejects_a_long_string() -> None:
    for _, (topic, payload) in VALID.items():
        assert reason_of(json.dumps(payload).encode(), topic) is None
    ts_fields = [(model, "ts") for model in set(SCHEMAS.values())]  # ts may be RFC 3339
    for model, name in [*((m, n) for m, n, _ in string_fields()), *ts_fields]:
        topic, valid = VALID[model.__name__]
        payload = json.dumps({**valid, name: "x" * 1000}).encode()
        assert reason_of(payload, topic) is Reason.SCHEMA, (model.__name__, name)


@pytest.mark.parametrize(
    ("topic", "base", "field", "cap"),
    [
        (STATUS, {"online": True}, "reason", 64),
        ("iot/gate/g1/event", {"ts": NOW, "event": "pass"}, "plate", 16),
        ("iot/road/d1/event", {"ts": NOW, "event": "speeding"}, "plate", 16),
    ],
)
def test_string_caps_are_exact_and_in_characters(
    topic: str, base: dict[str, Any], field: str, cap: int
) -> None:
    at_cap = json.dumps({**base, field: "湘" * cap}, ensure_ascii=False).encode()
    assert reason_of(at_cap, topic) is None
    over = json.dumps({**base, field: "湘" * (cap + 1)}, ensure_ascii=False).encode()
    assert reason_of(over, topic) is Reason.SCHEMA


# Order of checks and the topic cache


def test_size_is_checked_before_depth_and_depth_before_parsing() -> None:
    deep = b"[" * 2000 + b"]" * 2000
    assert reason_of(deep, max_json_depth=16) is Reason.TOO_DEEP
    small = Decoder(REGISTRY, max_payload_bytes=1000, future_skew_ms=0, max_age_ms=1)
    rejected = small.decode(RIVER, deep, NOW)
    assert isinstance(rejected, Rejection) and rejected.reason is Reason.TOO_LARGE


def test_topics_are_remembered_only_when_valid() -> None:
    decoder = big_decoder()
    ok = json.dumps({"ts": NOW, "ph": 7}).encode()
    for i in range(200):
        bad = decoder.decode(f"iot/river/nobody{i}/telemetry", ok, NOW)
        assert isinstance(bad, Rejection) and bad.reason is Reason.UNKNOWN_DEVICE
        assert isinstance(decoder.decode("iot/gate/r1/telemetry", ok, NOW), Rejection)
    for _ in range(3):
        result = decoder.decode(RIVER, ok, NOW)
        assert isinstance(result, Decoded) and result.device.id == "r1"
        again = decoder.decode("iot/river/r1/event", ok, NOW)
        assert isinstance(again, Rejection) and again.reason is Reason.BAD_TOPIC
    assert len(decoder._routes) == 1  # bounded by the registry, not by what was sent
