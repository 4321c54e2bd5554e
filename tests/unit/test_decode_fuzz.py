"""Fuzzing the decoder: whatever the bytes, a message is stored or dead-lettered with a reason.

Random bytes, and adversarial JSON built field by field for every kind and channel of the
small registry: deep nesting, thousands of keys, huge and non-finite numbers, duplicate keys,
escapes of lone surrogates and NUL, byte order marks, long strings, every field of every
schema set to every wrong type, timestamps at and just past the edges of the window. For each:
``decode`` returns a ``Decoded`` or a ``Rejection`` with one of the decoder's reasons, never
raises; and a ``Decoded`` encodes to one line of line protocol that parses back to its
measurement, tags, fields and time.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from devices.kinds import Channel, Kind
from devices.payloads import SCHEMAS
from ingest.intake.decode import Decoded, Decoder, Reason, Rejection
from ingest.intake.lineprotocol import LineEncoder, measurement_of
from ingest.intake.plates import PlateHasher
from tests.unit.test_payloads import NOW, REGISTRY

SKEW_MS = 300_000
MAX_AGE_MS = 30 * 86_400_000
MAX_BYTES = 16_384  # the service's default
DECODER = Decoder(
    REGISTRY, max_payload_bytes=MAX_BYTES, future_skew_ms=SKEW_MS, max_age_ms=MAX_AGE_MS
)
ENCODER = LineEncoder(REGISTRY, PlateHasher(b"fuzz"))
# What decode may answer; WRITE_REJECTED is the writer's, never the decoder's.
DECODER_REASONS = frozenset(Reason) - {Reason.WRITE_REJECTED, Reason.INTERNAL_ERROR}
# Together about 10 s on a laptop; most of it is hypothesis building the adversarial payloads.
FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])

_DEVICE_OF = {d.kind: d.id for d in REGISTRY.devices.values()}
TOPICS = sorted(f"iot/{kind.value}/{_DEVICE_OF[kind]}/{channel.value}" for kind, channel in SCHEMAS)
# Every field of every schema, by topic, to know what to set wrong.
FIELDS: dict[str, list[str]] = {
    f"iot/{kind.value}/{_DEVICE_OF[kind]}/{channel.value}": list(model.model_fields)
    for (kind, channel), model in SCHEMAS.items()
}
VALID: dict[str, dict[str, Any]] = {
    "iot/gate/g1/telemetry": {
        "ts": NOW,
        "door": "open",
        "people_in": 3,
        "people_out": 1,
        "vehicles_in": 0,
        "vehicles_out": 2,
        "battery_v": 12.4,
    },
    "iot/gate/g1/event": {"ts": NOW, "event": "pass", "direction": "in", "plate": "湘E·12345"},
    "iot/river/r1/telemetry": {"ts": NOW, "seq": 9, "water_level_m": 208.2, "ph": 7.1},
    "iot/road/d1/telemetry": {"ts": NOW, "vehicle_count": 12, "avg_speed_kmh": 41.5},
    "iot/road/d1/event": {"ts": NOW, "event": "accident", "lane": 2, "confidence": 0.9},
    "iot/gate/g1/status": {"online": False, "ts": NOW, "reason": "power"},
    "iot/river/r1/status": {"online": True},
    "iot/road/d1/status": {"online": True, "seq": 0},
}

# JSON text for a value, in groups drawn evenly: tokens a lenient or careless parser gets wrong.
_EDGE_MS = [
    NOW,
    NOW + SKEW_MS,
    NOW + SKEW_MS + 1,
    NOW - MAX_AGE_MS,
    NOW - MAX_AGE_MS - 1,
    946_684_800_000 - 1,  # the schema's own bounds: 2000 and 2100
    4_102_444_800_000 + 1,
]
NOT_FINITE = ["NaN", "-NaN", "Infinity", "-Infinity", "1e400", "-1e400", "inf", "nan"]
NUMBERS = [
    "-0",
    "-0.0",
    "0e0",
    "1e-400",
    "9" * 400,
    "-" + "9" * 400,
    "1" + "0" * 4400,
    "9007199254740993",
    "1.7976931348623157e308",
    "5e-324",
    "0x10",
    "01",
    "+1",
    ".5",
]
OTHER_TYPES = ["true", "false", "null", "[]", "{}", '""', '"7"', "[7]", '{"v": 7}']
STRINGS = [
    '"\\ud800"',
    '"\\udc00\\ud800"',
    '"\\ud83d\\ude00"',
    '"\\u0000"',
    '"a\\nb\\r\\"c\\\\"',
    '"\\u2028\\u0085\\u000b"',
    '"' + "x" * 5000 + '"',
    '"湘E·12345"',
    '"\\t \\u00b7"',
    "'single'",
]
TIMESTAMPS = [
    *(str(ms) for ms in _EDGE_MS),
    *(f"{ms}.5" for ms in _EDGE_MS),
    *(f"{ms / 1000}e3" for ms in _EDGE_MS),
    '"2026-11-18T11:06:40Z"',
    '"2026-11-18T11:06:40"',  # no offset
    '"2026-11-18T19:06:40+08:00"',
    '"2026-11-18T11:11:40.000+00:00"',  # the future edge
    '"2026-11-18T11:11:40.001+00:00"',  # one ms past it
    '"2026-10-19T11:06:40+00:00"',  # the stale edge
    '"2026-10-19T11:06:39.999+00:00"',
    '"9999-12-31T23:59:59+00:00"',
    '"' + "1" * 41 + '"',
]
_GROUPS = [NOT_FINITE, NUMBERS, OTHER_TYPES, STRINGS, TIMESTAMPS]
token = st.sampled_from(_GROUPS).flatmap(st.sampled_from)
json_text = st.recursive(
    st.one_of(
        token,
        st.integers().map(str),
        st.floats(allow_nan=False, allow_infinity=False).map(repr),
        st.text(max_size=80).map(lambda s: json.dumps(s, ensure_ascii=False)),
        st.text(max_size=20).map(json.dumps),  # \uXXXX escapes, surrogate pairs included
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4).map(lambda xs: "[" + ",".join(xs) + "]"),
        st.lists(st.tuples(st.text(max_size=8), inner), max_size=4).map(
            lambda kv: "{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in kv) + "}"
        ),
    ),
    max_leaves=12,
)
deep = st.builds(
    lambda n, opener: opener * n + ("]" if opener == "[" else "1}") * n,
    st.integers(min_value=10, max_value=3000),
    st.sampled_from(["[", '{"a":']),
)


@st.composite
def adversarial(draw: st.DrawFn) -> tuple[str, bytes]:
    """A topic of the registry and a payload built from its valid one, then broken."""
    topic = draw(st.sampled_from(TOPICS))
    pairs = [(k, json.dumps(v, ensure_ascii=False)) for k, v in VALID[topic].items()]
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        pick = draw(st.integers(min_value=0, max_value=12))
        if pick < 3:  # the time window's edges, where they matter: ts
            name, value = "ts", draw(st.sampled_from(TIMESTAMPS))
        else:  # any field: tokens 6, JSON 3, deep 1 in 10
            name = draw(st.sampled_from(FIELDS[topic]))
            value = draw(token if pick < 9 else json_text if pick < 12 else deep)
        if draw(st.booleans()):
            pairs = [(k, v) for k, v in pairs if k != name]  # replace
        pairs.append((name, value))  # else a duplicate key: the last one wins
    if draw(st.booleans()):
        pairs = [p for p in pairs if p[0] != draw(st.sampled_from(FIELDS[topic]))]
    extras = draw(st.integers(min_value=0, max_value=4))
    pairs += [(f"x{i}", draw(json_text)) for i in range(extras)]
    draw(st.randoms()).shuffle(pairs)
    if draw(st.integers(min_value=0, max_value=9)) == 0:  # thousands of keys
        pairs += [(f"k{i}", "0") for i in range(draw(st.integers(100, 3000)))]
    text = "{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in pairs) + "}"
    raw = text.encode("utf-8", errors="surrogatepass")  # lone surrogates, as bytes
    how = draw(st.sampled_from(["as is"] * 15 + ["bom", "truncate", "insert", "nul", "latin1"]))
    if how == "bom":
        raw = b"\xef\xbb\xbf" + raw
    elif how == "truncate":
        raw = raw[: draw(st.integers(0, len(raw)))]
    elif how == "insert":
        at = draw(st.integers(0, len(raw)))
        raw = raw[:at] + draw(st.binary(min_size=1, max_size=8)) + raw[at:]
    elif how == "nul":
        raw = raw.replace(b",", b"\x00,", 1)
    elif how == "latin1":
        raw = text.encode("latin-1", errors="replace")
    return topic, raw


def check(topic: str, payload: bytes) -> Decoded | Rejection:
    """Decode, assert the property, return what came out."""
    result = DECODER.decode(topic, payload, NOW)  # an exception here fails the test
    assert isinstance(result, Decoded | Rejection), result
    if isinstance(result, Rejection):
        assert result.reason in DECODER_REASONS
        assert isinstance(result.detail, str) and len(result.detail) <= 400
        return result
    payload.decode("utf-8")  # only UTF-8 is ever accepted
    assert len(payload) <= MAX_BYTES
    assert NOW - MAX_AGE_MS <= result.ts_ms <= NOW + SKEW_MS
    check_line(result, ENCODER.encode(result))
    return result


def check_line(decoded: Decoded, line: str) -> None:
    """One line that parses back to the message's measurement, tags, fields and time."""
    assert "\n" not in line and "\r" not in line, line
    line.encode("utf-8")  # what the writer sends; a lone surrogate would raise here
    measurement, tags, fields, ts = parse_line(line)
    assert measurement == measurement_of(decoded.kind, decoded.channel)
    assert tags == {k: v for k, v in ENCODER.tags_for(decoded).items() if v != ""}
    assert tags["device"] == decoded.device.id
    assert ts == decoded.ts_ms
    expected = ENCODER.fields_for(decoded)
    assert set(fields) == set(expected) and fields, (fields, expected)
    for key, value in expected.items():
        got = fields[key]
        if isinstance(value, bool | int):
            assert got == value and type(got) is type(value), (key, got, value)
        elif isinstance(value, float):
            assert isinstance(got, float) and math.isfinite(got) and got == value, (key, got)
        else:  # InfluxDB unescapes only \\ and \"; the encoder's \n and \r stay as written
            assert got == value.replace("\n", "\\n").replace("\r", "\\r"), (key, got, value)


def _until(text: str, i: int, stops: str) -> tuple[str, int]:
    """Read up to an unescaped character of ``stops``; returns the raw text and its end."""
    start = i
    while i < len(text) and text[i] not in stops:
        i += 2 if text[i] == "\\" else 1
    return text[start:i], i


def _unescape(text: str, escaped: str | None = None) -> str:
    """Drop the backslash before a character of ``escaped`` (before any, if None)."""
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text) and (escaped is None or text[i + 1] in escaped):
            out.append(text[i + 1])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def parse_line(line: str) -> tuple[str, dict[str, str], dict[str, object], int]:
    """A strict reader of one line of line protocol, as InfluxDB's documentation defines it."""
    series, i = _until(line, 0, " ")
    assert line[i] == " "
    parts = []
    j = 0
    while j <= len(series):
        part, j = _until(series, j, ",")
        parts.append(part)
        j += 1
    measurement, tags = _unescape(parts[0]), {}
    for part in parts[1:]:
        key, k = _until(part, 0, "=")
        assert part[k] == "=" and key and part[k + 1 :], part
        tags[_unescape(key)] = _unescape(part[k + 1 :])
    fields: dict[str, object] = {}
    i += 1
    while True:
        key, i = _until(line, i, "=")
        assert i < len(line) and line[i] == "=" and key, f"no field at {i}: {line!r}"
        i += 1
        if line[i] == '"':
            end = i + 1
            while line[end] != '"':
                end += 2 if line[end] == "\\" else 1
            value: object = _unescape(line[i + 1 : end], '"\\')  # string values: \\ and \" only
            i = end + 1
        else:
            raw, i = _until(line, i, ", ")
            if raw in ("true", "false"):
                value = raw == "true"
            elif raw.endswith("i"):
                value = int(raw[:-1])
            else:
                value = float(raw)
                assert math.isfinite(value), raw
        fields[_unescape(key)] = value
        if line[i] == " ":
            break
        assert line[i] == ","
        i += 1
    ts = line[i + 1 :]
    assert ts.lstrip("-").isdigit(), ts
    return measurement, tags, fields, int(ts)


def is_fieldless_event(decoded: Decoded) -> bool:
    """An event that says only when and what: valid by its schema, no field to store."""
    return decoded.channel is Channel.EVENT and all(
        v is None for k, v in decoded.message.__dict__.items() if k not in ("ts", "event")
    )


@pytest.mark.parametrize(
    ("topic", "event"), [("iot/gate/g1/event", "forced_open"), ("iot/road/d1/event", "accident")]
)
def test_an_event_with_only_ts_and_event_has_a_field(topic: str, event: str) -> None:
    decoded = DECODER.decode(topic, json.dumps({"ts": NOW, "event": event}).encode(), NOW)
    assert isinstance(decoded, Decoded)  # the schema accepts it...
    assert is_fieldless_event(decoded)
    _, _, fields, _ = parse_line(ENCODER.encode(decoded))  # ...and it has a field to store
    assert fields == {"n": 1}


def test_the_line_reader_reads_what_it_should() -> None:
    """The reader the property relies on, checked on lines known by hand."""
    line = r'road_event,device=d1,event=x\ y\,z\=w a=1i,b="q\"\\ \n",c=-0,d=true 17'
    assert parse_line(line) == (
        "road_event",
        {"device": "d1", "event": "x y,z=w"},
        {"a": 1, "b": 'q"\\ \\n', "c": -0.0, "d": True},
        17,
    )


@settings(FUZZ, max_examples=2000)
@given(topic=st.sampled_from(TOPICS), payload=st.binary(max_size=512))
def test_random_bytes_are_decoded_or_rejected_with_a_reason(topic: str, payload: bytes) -> None:
    check(topic, payload)


@settings(FUZZ, max_examples=1500)
@given(adversarial())
@example(("iot/river/r1/status", b'{"online": true, "reason": "\\ud800"}'))
@example(("iot/gate/g1/status", b'{"online": true, "reason": "a\\nb\\rc\\u2028"}'))
@example(("iot/river/r1/telemetry", b'{"ts": 1795000000000, "ph": -0.0}'))
@example(("iot/river/r1/telemetry", b'{"ts": 1795000300000, "ph": 1}'))  # the future edge
@example(("iot/river/r1/telemetry", b'{"ts": 1795000300001, "ph": 1}'))
@example(("iot/river/r1/telemetry", b'{"ts": "2026-10-19T11:06:40Z", "ph": 1}'))  # stale edge
@example(("iot/river/r1/telemetry", b'{"ts": "2026-10-19T11:06:39.999Z", "ph": 1}'))
@example(("iot/road/d1/event", b'{"ts": 1795000300000, "event": "speeding", "plate": "\\u0000"}'))
def test_adversarial_json_is_decoded_or_rejected_with_a_reason(case: tuple[str, bytes]) -> None:
    check(*case)


def test_the_adversarial_strategy_reaches_both_outcomes_and_many_reasons() -> None:
    """Guard against a strategy that only ever produces one kind of failure."""
    seen: set[Reason | None] = set()

    @settings(max_examples=400, deadline=None, database=None, derandomize=True)
    @given(adversarial())
    def collect(case: tuple[str, bytes]) -> None:
        result = check(*case)
        seen.add(result.reason if isinstance(result, Rejection) else None)

    collect()
    expected = {
        None,
        Reason.INVALID_JSON,
        Reason.SCHEMA,
        Reason.OUT_OF_RANGE,
        Reason.NOT_FINITE,
        Reason.TOO_DEEP,
        Reason.TOO_MANY_KEYS,
        Reason.NOT_UTF8,
    }
    assert expected <= seen, expected - seen


def test_every_topic_of_the_registry_is_fuzzed() -> None:
    assert len(TOPICS) == len(SCHEMAS) == 8
    for kind, channel in SCHEMAS:
        assert isinstance(kind, Kind) and isinstance(channel, Channel)
    for topic, valid in VALID.items():
        result = check(topic, json.dumps(valid, ensure_ascii=False).encode())
        assert isinstance(result, Decoded), (topic, result)
