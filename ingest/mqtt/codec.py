"""The few MQTT 3.1.1 packets a persistent-session subscriber needs, as bytes and back.

Why not paho's own parser: the benchmark (benchmarks/README.md) measured paho at ~35 µs of CPU
per received QoS 1 message — three ``recv`` system calls, an ``MQTTMessage``, a topic-matcher
walk and a log record per packet, one event-loop turn per message — against ~3 µs for this
parser reading what one ``recv`` returned in a loop. Receiving was half of the service's time.
The rest of citysense (the alert publisher, the simulator, the tests) uses aiomqtt/paho; the
consumer's packets are checked against them through a real Mosquitto in
tests/integration/test_mqtt_session.py.

Only what a subscriber sees is parsed: CONNACK, SUBACK, PUBLISH (QoS 0 and 1), PINGRESP.
Anything else from the broker is a protocol error (the caller closes the connection). Pure
functions of bytes, no I/O.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

CONNECT, CONNACK, PUBLISH, PUBACK, SUBSCRIBE, SUBACK = 1, 2, 3, 4, 8, 9
PINGREQ, PINGRESP, DISCONNECT = 12, 13, 14

PINGREQ_PACKET = b"\xc0\x00"
DISCONNECT_PACKET = b"\xe0\x00"
SUBACK_FAILURE = 0x80

CONNACK_REFUSALS = {
    1: "unacceptable protocol version",
    2: "client identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorised",
}


class ProtocolError(ValueError):
    """The broker sent something a 3.1.1 subscriber does not expect."""


@dataclass(frozen=True, slots=True)
class Publish:
    """A PUBLISH: ``mid`` is 0 for QoS 0."""

    topic: str
    payload: bytes
    qos: int
    mid: int


@dataclass(frozen=True, slots=True)
class Control:
    """Any other packet from the broker: its type and its body (after the fixed header)."""

    type: int
    body: bytes


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string(s: str) -> bytes:
    data = s.encode()
    return struct.pack("!H", len(data)) + data


def _packet(first_byte: int, body: bytes) -> bytes:
    return bytes([first_byte]) + _remaining_length(len(body)) + body


def connect_packet(
    client_id: str,
    *,
    keepalive_s: int,
    clean_session: bool,
    username: str | None = None,
    password: str | None = None,
) -> bytes:
    """CONNECT, protocol level 4 (3.1.1)."""
    flags = 0x02 if clean_session else 0
    payload = _string(client_id)
    if username is not None:
        flags |= 0x80
        payload += _string(username)
        if password is not None:
            flags |= 0x40
            payload += _string(password)
    header = _string("MQTT") + bytes([4, flags]) + struct.pack("!H", keepalive_s)
    return _packet(CONNECT << 4, header + payload)


def subscribe_packet(mid: int, topic_filter: str, qos: int) -> bytes:
    """SUBSCRIBE of one filter."""
    return _packet(
        SUBSCRIBE << 4 | 0x02, struct.pack("!H", mid) + _string(topic_filter) + bytes([qos])
    )


def pubacks(mids: list[int]) -> bytes:
    """One PUBACK per message id, concatenated (written in one go)."""
    return b"".join(b"\x40\x02" + mid.to_bytes(2, "big") for mid in mids)


def connack_result(body: bytes) -> tuple[bool, int]:
    """(session present, return code) of a CONNACK body."""
    if len(body) != 2:
        raise ProtocolError(f"CONNACK of {len(body)} bytes")
    return bool(body[0] & 1), body[1]


def suback_codes(body: bytes) -> tuple[int, list[int]]:
    """(message id, granted QoS or 0x80 per filter) of a SUBACK body."""
    if len(body) < 3:
        raise ProtocolError(f"SUBACK of {len(body)} bytes")
    return (body[0] << 8) | body[1], list(body[2:])


def parse(buf: bytearray | bytes, start: int = 0) -> tuple[list[Publish | Control], int]:
    """The complete packets in ``buf[start:]`` and the offset after the last one.

    A packet cut off at the end of ``buf`` is left for the next call (with more bytes).
    Hot path: one call per ``recv``, a few hundred packets each, so it works on plain ints
    and slices rather than per-packet objects beyond the result.
    """
    out: list[Publish | Control] = []
    pos, end = start, len(buf)
    while end - pos >= 2:
        first = buf[pos]
        # Remaining length: up to four bytes, 7 bits each, least significant first.
        i, length, shift = pos + 1, 0, 0
        while True:
            if i >= end:
                return out, pos
            byte = buf[i]
            i += 1
            length |= (byte & 0x7F) << shift
            if not byte & 0x80:
                break
            shift += 7
            if shift > 21:
                raise ProtocolError("remaining length longer than four bytes")
        stop = i + length
        if stop > end:
            return out, pos
        kind = first >> 4
        if kind == PUBLISH:
            out.append(_publish(buf, first, i, stop))
        elif kind in (CONNACK, SUBACK, PINGRESP):
            out.append(Control(kind, bytes(buf[i:stop])))
        else:
            raise ProtocolError(f"unexpected packet type {kind} from the broker")
        pos = stop
    return out, pos


def _publish(buf: bytearray | bytes, first: int, i: int, stop: int) -> Publish:
    qos = (first >> 1) & 0x03
    if qos > 1:  # we subscribe at QoS 1, so the broker never sends QoS 2
        raise ProtocolError(f"PUBLISH at QoS {qos}")
    if stop - i < 2:
        raise ProtocolError("malformed PUBLISH")
    topic_end = i + 2 + ((buf[i] << 8) | buf[i + 1])
    if topic_end > stop:
        raise ProtocolError("PUBLISH topic runs past the packet")
    try:
        topic = bytes(buf[i + 2 : topic_end]).decode()
    except UnicodeDecodeError as e:
        raise ProtocolError("PUBLISH topic is not UTF-8") from e
    mid = 0
    if qos:
        if topic_end + 2 > stop:
            raise ProtocolError("PUBLISH without a message id")
        mid = (buf[topic_end] << 8) | buf[topic_end + 1]
        topic_end += 2
    return Publish(topic, bytes(buf[topic_end:stop]), qos, mid)
