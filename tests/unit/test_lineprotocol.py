"""The hand-written encoder must produce what influxdb-client's Point produces."""

import string

import pytest
from hypothesis import given
from hypothesis import strategies as st
from influxdb_client import Point

from ingest.intake.decode import Decoded
from ingest.intake.lineprotocol import (
    LineEncoder,
    encode_fields,
    format_field_value,
    measurement_of,
    series_key,
)
from ingest.intake.plates import PlateHasher, normalise_plate
from tests.unit.test_payloads import NOW, REGISTRY, decode


def point_line(measurement: str, tags: dict[str, str], fields: dict[str, object], ts: int) -> str:
    p = Point(measurement)
    for k, v in tags.items():
        p.tag(k, v)
    for k, v in fields.items():
        p.field(k, v)
    p.time(ts, write_precision="ms")
    return str(p.to_line_protocol())


# Without line breaks: there we deliberately differ from Point (see the test below).
text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r"),
    min_size=1,
    max_size=30,
)
keys = st.text(
    alphabet=string.ascii_letters + string.digits + "_ ,=\\\"'-", min_size=1, max_size=20
).filter(lambda s: not s.endswith("\\"))
values = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    text,
)


@given(
    tags=st.dictionaries(keys, keys, max_size=4),
    fields=st.dictionaries(keys, values, min_size=1, max_size=5),
    ts=st.integers(min_value=0, max_value=2**42),
)
def test_matches_influxdb_client_point(
    tags: dict[str, str], fields: dict[str, object], ts: int
) -> None:
    ours = f"{series_key('river', tags)} {encode_fields(fields)} {ts}"
    assert ours == point_line("river", tags, fields, ts)


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (True, "true"),
        (False, "false"),
        (3, "3i"),
        (0.5, "0.5"),
        (208.0, "208"),
        (1e16, "1e+16"),
        ('say "hi" \\ bye', '"say \\"hi\\" \\\\ bye"'),
    ],
)
def test_field_value_types(value: object, encoded: str) -> None:
    assert format_field_value(value) == encoded


def test_a_line_break_in_a_string_cannot_start_a_line_of_its_own() -> None:
    # Point would write the newline raw, and InfluxDB would read a second line from it.
    reason = 'x"\nriver,device=r1 water_level_m=999 1\r'
    line = f"device_status {encode_fields({'reason': reason})} 1"
    assert "\n" not in line and "\r" not in line
    assert line == 'device_status reason="x\\"\\nriver,device=r1 water_level_m=999 1\\r" 1'


def encoder() -> LineEncoder:
    return LineEncoder(REGISTRY, PlateHasher(b"k"))


def test_telemetry_line_has_area_tags_and_payload_fields() -> None:
    decoded = decode("iot/river/r1/telemetry", {"ts": NOW, "seq": 7, "water_level_m": 208.25})
    assert isinstance(decoded, Decoded)
    assert encoder().encode(decoded) == (
        f"river,county=co,device=r1,grid=g,township=t,village=v seq=7i,water_level_m=208.25 {NOW}"
    )


def test_event_type_is_a_tag_and_plate_only_a_hash() -> None:
    decoded = decode(
        "iot/road/d1/event",
        {"ts": NOW, "seq": 3, "event": "speeding", "speed_kmh": 92.0, "plate": "湘E·12345"},
    )
    assert isinstance(decoded, Decoded)
    line = encoder().encode(decoded)
    assert line.startswith("road_event,county=co,device=d1,event=speeding,grid=g,")
    assert "12345" not in line
    assert f'plate_hash="{PlateHasher(b"k")("湘E 12345")}"' in line


def test_status_goes_to_device_status_with_kind_tag() -> None:
    decoded = decode("iot/gate/g1/status", {"online": False, "reason": 'lost "link"'})
    assert isinstance(decoded, Decoded)
    line = encoder().encode(decoded)
    assert line == (
        "device_status,county=co,device=g1,grid=g,kind=gate,township=t,village=v "
        f'online=false,reason="lost \\"link\\"" {NOW}'
    )


def test_measurement_names() -> None:
    from devices.kinds import Channel, Kind

    assert measurement_of(Kind.GATE, Channel.TELEMETRY) == "gate"
    assert measurement_of(Kind.ROAD, Channel.EVENT) == "road_event"
    assert measurement_of(Kind.RIVER, Channel.STATUS) == "device_status"


def test_plate_hash_is_keyed_and_separator_blind() -> None:
    assert normalise_plate("湘e·12 345") == "湘E12345"
    assert PlateHasher(b"a")("湘E12345") == PlateHasher(b"a")("湘E·12345")
    assert PlateHasher(b"a")("湘E12345") != PlateHasher(b"b")("湘E12345")
    assert len(PlateHasher(b"a")("湘E12345")) == 32


def test_encode_says_what_fields_for_and_encode_fields_say_for_a_simulated_city() -> None:
    # encode() walks a precomputed field plan per payload class (speed); this is the plain
    # statement of a line, over every kind, channel, optional field and plate of the simulator.
    import time
    from pathlib import Path

    from devices.registry import load_registry
    from ingest.intake.decode import Decoder
    from simulator import SimulationConfig, dry_run

    city = load_registry(Path(__file__).resolve().parents[2] / "config" / "registry.yaml")
    now = time.time_ns() // 1_000_000
    start = now - 700_000
    config = SimulationConfig(
        rate=20.0, duration=600.0, seed=3, scenarios=("flood", "pollution", "accident")
    )
    decoder = Decoder(city, max_payload_bytes=16384, future_skew_ms=300_000, max_age_ms=10**10)
    encoder = LineEncoder(city, PlateHasher(b"k"))
    seen: set[tuple[str, str]] = set()
    plates = 0
    for _, m in dry_run(config, city, start):
        d = decoder.decode(m.topic, m.payload.model_dump_json(exclude_none=True).encode(), now)
        assert isinstance(d, Decoded)
        measurement = measurement_of(d.kind, d.channel)
        fields = encode_fields(encoder.fields_for(d))
        plain = f"{series_key(measurement, encoder.tags_for(d))} {fields} {d.ts_ms}"
        assert encoder.encode(d) == plain
        seen.add((d.kind.value, d.channel.value))
        plates += "plate_hash=" in plain
    assert len(seen) >= 8 and plates > 0  # telemetry, events, statuses; plates hashed
