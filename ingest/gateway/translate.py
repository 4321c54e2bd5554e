"""What a field frame means for us: the messages to publish, the answer to send, or a refusal.

Pure: one function per protocol takes a parsed frame (devices/hj212.py, devices/sl651.py) and
the registry's stations of that protocol, and says what to do. The TCP server
(``ingest/gateway/server.py``) does it: publish, wait for the broker, then answer.

What is published is our river telemetry (devices/payloads.py) on the station's own topic, so
the service cannot tell a gateway's message from a device's, and validates it the same way.
"""

from __future__ import annotations

import hmac
import json
import re
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, replace
from datetime import datetime

from pydantic import ValidationError

from devices import hj212, sl651
from devices.kinds import Channel, Kind
from devices.partitions import partition_of
from devices.payloads import RiverTelemetry
from devices.registry import RiverDevice
from devices.topics import device_topic

# HJ 212 water factors with no field of ours that real surface-water stations send beside the
# five of GB 3838 (HJ 212-2017 appendix B): skipped, not refused, so the rest of their frame
# is kept. w00000 flow (of effluent), w01014 conductivity, w01018 CODcr, w21001 total nitrogen.
# The default of CITYSENSE_GATEWAY_HJ212_SKIP.
HJ212_IGNORED = ("w00000", "w01014", "w01018", "w21001")
# Readings a station marks anything but N (normal) are not measurements of the river: the
# analyser was stopped, in maintenance, set by hand, faulty, calibrating, over its range or
# out of touch (HJ 212-2017 table 8). They are counted and left out.
VALID_FLAGS = frozenset({"N", None})


@dataclass(frozen=True, slots=True)
class Accepted:
    """A frame from a known station with its password right: publish, then answer."""

    device_id: str
    messages: tuple[tuple[str, bytes], ...]  # (topic, payload), all at QoS 1
    answer: bytes | None  # sent once the broker has every message; None: no answer is due
    left_out: int = 0  # readings not published (flagged, or a kind of data we do not store)


@dataclass(frozen=True, slots=True)
class Refused:
    """A frame that will not be published, with why; ``raw`` is kept as the dead letter."""

    reason: str
    detail: str
    raw: bytes
    device_id: str | None = None  # when the station is known


Outcome = Accepted | Refused


def topic_for(device_id: str, partitions: int | None) -> str:
    """The station's telemetry topic as its own device would publish it (partitioned on NATS)."""
    topic = device_topic(Kind.RIVER, device_id, Channel.TELEMETRY)
    if partitions is None:
        return topic
    return topic.replace("iot/", f"iot/{partition_of(device_id, partitions)}/", 1)


def _payload(ts: datetime, values: Mapping[str, float]) -> bytes | Refused:
    """The JSON the service will read, checked by the service's own schema first: a frame the
    service would refuse (a time before 2000, say) is refused here, so it is not answered."""
    body: dict[str, float | int] = {"ts": int(ts.timestamp() * 1000), **values}
    try:
        RiverTelemetry.model_validate(body)
    except ValidationError as error:
        where = ", ".join(str(e["loc"][0]) for e in error.errors() if e["loc"]) or "the values"
        return Refused("out_of_range", f"outside the payload's range: {where}", b"")
    return json.dumps(body, separators=(",", ":")).encode()


def _password_ok(device: RiverDevice, given: str, *, hex_digits: bool = False) -> bool:
    expected = device.password.get_secret_value() if device.password else ""
    if hex_digits:  # SL 651's two bytes: 12ab and 12AB are one password
        given, expected = given.upper(), expected.upper()
    return bool(expected) and hmac.compare_digest(given.encode(), expected.encode())


# Every PW=… of the bytes, whatever its case: a run of junk may hold several frames' worth.
_HJ212_PW = re.compile(rb"(?i)PW=[^;&]*")


def hj212_masked(raw: bytes) -> bytes:
    """The bytes with every password written ``PW=******``: dead letters are read by
    operators, and a refused frame (out of range, say) may carry the station's true password."""
    return _HJ212_PW.sub(b"PW=******", raw)


def hj212_masked_detail(detail: str) -> str:
    """A parser's detail with any password in it masked: it may quote a malformed ``PW=``
    field (``'Pw=123456'``, ``PW='123456,'``), and it goes to the log and the dead letter."""
    return hj212_masked(detail.encode()).decode()


# The data published, finest first: real-time, minute means, hourly means. HJ 212 daily data
# (CN 2031) is a mean of what the station measured: we compute our own daily means (/quality)
# from its real-time or hourly data, where a stored mean would weigh twice. Answered, counted,
# not published.
_FINENESS = {"2011": 0, "2051": 1, "2061": 2}


def from_hj212(
    frame: hj212.Hj212Frame,
    raw: bytes,
    stations: Mapping[str, RiverDevice],
    partitions: int | None,
    finest: MutableMapping[str, int] | None = None,
) -> Outcome:
    """An HJ 212 data frame → the station's telemetry and the data response it asks for.

    ``finest`` (kept by the caller, per MN) is the finest kind of data each station has sent:
    coarser data from it is answered and left out, since a real-time reading and an hourly
    mean with one DataTime would be one point of the same fields, the later one winning.
    """
    device = stations.get(frame.mn)
    masked = hj212_masked(raw)
    if device is None:
        return Refused("unknown_station", f"MN {frame.mn} is no station of the registry", masked)
    if not _password_ok(device, frame.pw):
        return Refused("bad_password", f"wrong PW for MN {frame.mn}", masked, device.id)
    if frame.cn not in hj212.DATA_CNS or frame.data_time is None:
        detail = f"CN {frame.cn} is not data upload"
        return Refused("unsupported_cn", detail, masked, device.id)
    answer = hj212.data_response(frame) if frame.needs_answer else None
    fineness = _FINENESS.get(frame.cn)
    if fineness is None:
        return Accepted(device.id, (), answer, len(frame.readings))
    if finest is not None and fineness > finest.get(frame.mn, fineness):
        return Accepted(device.id, (), answer, len(frame.readings))
    values = {n: r.value for n, r in frame.readings.items() if r.flag in VALID_FLAGS}
    left_out = len(frame.readings) - len(values)
    if not values:
        return Accepted(device.id, (), answer, left_out)
    payload = _payload(frame.data_time, values)
    if isinstance(payload, Refused):
        return replace(payload, raw=masked, device_id=device.id)
    if finest is not None:  # only data that is stored makes the station's finest
        finest[frame.mn] = fineness
    return Accepted(device.id, ((topic_for(device.id, partitions), payload),), answer, left_out)


def sl651_masked(raw: bytes) -> bytes:
    """The bytes with every password zeroed, as ``hj212_masked``: the two bytes after the
    addresses of each ``7E 7E`` (HEX mode), and the four characters after an ASCII-mode
    frame's addresses (it starts with SOH, 01; read as junk, kept all the same)."""
    kept = bytearray(raw)
    at = kept.find(sl651.SOH)
    while at >= 0:
        kept[at + 8 : at + 10] = b"\x00\x00"[: max(0, min(2, len(kept) - at - 8))]
        at = kept.find(sl651.SOH, at + 2)
    return _SL651_ASCII_PASSWORD.sub(rb"\g<1>0000", bytes(kept))


# An ASCII-mode header wherever it is in the bytes: SOH, the centre's address (2 hex
# characters) and the station's (10), then the password (4).
_SL651_ASCII_PASSWORD = re.compile(rb"(\x01[0-9A-Fa-f]{12})[0-9A-Fa-f]{4}")


def from_sl651(
    frame: sl651.Sl651Frame,
    stations: Mapping[str, RiverDevice],
    partitions: int | None,
    now: datetime,
) -> Outcome:
    """An SL 651 report → the station's telemetry at its observation time, and the answer."""
    device = stations.get(frame.station)
    masked = sl651_masked(frame.raw)
    if device is None:
        detail = f"station address {frame.station} is no station of the registry"
        return Refused("unknown_station", detail, masked)
    if frame.direction != "up":  # only the centre sends down frames
        return Refused("wrong_direction", "a down frame from a station", masked, device.id)
    if not _password_ok(device, frame.password, hex_digits=True):
        return Refused("bad_password", f"wrong password for {frame.station}", masked, device.id)
    if frame.function == sl651.KEEPALIVE:
        return Accepted(device.id, (), None)  # 链路维持报: the centre does not answer it
    answer = sl651.answer(frame, now)
    if frame.function == sl651.TEST or frame.observed is None:
        return Accepted(device.id, (), answer, len(frame.readings))  # 测试报: not the river
    if not frame.readings:
        return Accepted(device.id, (), answer)
    # An hourly report's 5-minute series: its rain is in rainfall_mm already (the parser sums
    # it); its levels are relative (相对水位) and the registry has no base to make them ours.
    payload = _payload(frame.observed, frame.readings)
    if isinstance(payload, Refused):
        return replace(payload, raw=masked, device_id=device.id)
    return Accepted(device.id, ((topic_for(device.id, partitions), payload),), answer)
