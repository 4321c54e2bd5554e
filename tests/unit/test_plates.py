"""What is kept of a rejected message never holds a licence plate in clear (README: Security)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingest.intake.plates import PlateHasher, redact_plates

HASH = PlateHasher(b"test-key")
PLATE = "湘E·12345"

# Every shape a camera firmware, a broken encoder or a hostile device has been seen (or can be
# imagined) to send a plate in. Strict JSON keeps its shape with the value hashed; anything the
# redactor cannot read with certainty is withheld whole.
SHAPES = [
    '{"plate": "%s"}',
    '{"p\\u006cate": "%s"}',
    '{"Plate ": "%s"}',
    '{"ｐｌａｔｅ": "%s"}',
    '{"plate_no": "%s", "plate_confidence": 0.9}',
    '{"plate": ["%s"]}',
    '{"plate": {"number": "%s"}}',
    '{"plate": {"color": "blue", "number": "%s"}}',  # review: only up to the comma was hashed
    '{"plate": {"color": "blue", "number": "%s"',
    '{"x": "a\\"", "plate": "%s"}',
    '{"ts": 1, "plate": "%s"',  # cut off
    '{"ts": 1, "plate": "%s',  # cut off inside the plate
    '{plate: "%s"}',  # bare key
    "{'plate': '%s'}",  # single quotes
    '{"plate" = "%s"}',
    '["plate", "%s"]',
    "plate=%s&ts=1",
    '{"note": "plate %s"}',
    '{"note": "plate_hash: %s"}',
    '{"plate %s": 1}',
    '{"a": "x", "plate=%s ": "y"}',
]


def clear_digits(kept: bytes) -> bool:
    return b"12345" in kept or b"\\u0031\\u0032" in kept


@pytest.mark.parametrize("shape", SHAPES)
def test_no_shape_keeps_the_plate_in_clear(shape: str) -> None:
    kept = redact_plates((shape % PLATE).encode(), HASH)
    assert not clear_digits(kept), kept.decode()
    assert b"plate_hash:" in kept or json.loads(kept)["withheld"] == "may_contain_plate"


def test_strict_json_keeps_its_shape_and_a_hash_matching_stored_events() -> None:
    kept = redact_plates(json.dumps({"ts": 1, "plate": PLATE}).encode(), HASH)
    assert json.loads(kept) == {"ts": 1, "plate": "plate_hash:" + HASH("湘E 12345")}


def test_withheld_keeps_length_and_a_keyed_fingerprint() -> None:
    payload = ("{plate: '" + PLATE + "'}").encode()
    kept = json.loads(redact_plates(payload, HASH))
    assert kept["bytes"] == len(payload)
    assert kept["payload_hash"] == json.loads(redact_plates(payload, HASH))["payload_hash"]
    other = json.loads(redact_plates(payload, PlateHasher(b"other-key")))
    assert other["payload_hash"] != kept["payload_hash"]


@pytest.mark.parametrize(
    "payload",
    [b'{"ts": 1, "ph": 7}', '{"ts": 1, "name": "湘江"}'.encode(), b"{nope", b"\xff\xfe"],
)
def test_what_cannot_hold_a_plate_is_kept_as_sent(payload: bytes) -> None:
    assert redact_plates(payload, HASH) is payload


plates = st.text(alphabet="ABCDEFGHJKLMNPQRSTUVWXYZ0123456789", min_size=5, max_size=7).map(
    lambda s: "湘" + s + "9"
)
keys = st.sampled_from(["plate", "Plate", "PLATE", "pl\\u0061te", "plate_no", "ｐｌａｔｅ"])
quotes = st.sampled_from(['"', "'", ""])
seps = st.sampled_from([":", " : ", "=", ", "])
junk = st.text(alphabet='{}[],": \\', max_size=6)


@given(plate=plates, key=keys, kq=quotes, vq=quotes, sep=seps, before=junk, after=junk)
def test_a_plate_under_any_spelling_of_its_key_is_never_kept(
    plate: str, key: str, kq: str, vq: str, sep: str, before: str, after: str
) -> None:
    payload = f"{before}{kq}{key}{kq}{sep}{vq}{plate}{vq}{after}".encode()
    kept = redact_plates(payload, HASH)
    assert plate.encode() not in kept
    assert plate[1:].encode() not in kept
