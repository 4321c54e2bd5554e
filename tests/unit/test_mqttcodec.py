"""The consumer's MQTT packets: framing in any split, the fields a subscriber reads, errors.

paho-mqtt builds the reference bytes (its packet writer, reached through a client that is
never connected), so our parser is checked against the library it replaces on the hot path.
"""

from __future__ import annotations

from typing import Any

import paho.mqtt.client as mqtt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion

from ingest.mqtt.codec import (
    CONNACK,
    PINGRESP,
    SUBACK,
    Control,
    ProtocolError,
    Publish,
    connack_result,
    connect_packet,
    parse,
    pubacks,
    suback_codes,
    subscribe_packet,
)


class _NoSocket:
    def close(self) -> None:
        pass


class _Capture:
    """A paho client whose outgoing packets are captured instead of sent."""

    def __init__(self) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="ref")
        self.sent: list[bytes] = []
        self.client._packet_queue = self._queue  # type: ignore[method-assign]
        self.client._sock = _NoSocket()  # type: ignore[assignment]  # "connected": never used

    def _queue(self, command: int, packet: bytes, mid: int, qos: int, info: Any = None) -> Any:
        self.sent.append(bytes(packet))
        return mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS


_PUBLISHER = _Capture()


def paho_publish(topic: str, payload: bytes, qos: int, mid: int, retain: bool = False) -> bytes:
    """The PUBLISH bytes paho writes (a broker forwards the same framing)."""
    _PUBLISHER.sent.clear()
    _PUBLISHER.client._send_publish(mid, topic.encode(), payload, qos, retain)
    (packet,) = _PUBLISHER.sent
    return packet


def test_paho_and_our_subscribe_and_connect_bytes_agree() -> None:
    capture = _Capture()
    capture.client._send_subscribe(False, [(b"iot/+/+/+", 1)])
    (theirs,) = capture.sent
    # paho numbers its first message 1, as we do.
    assert subscribe_packet(1, "iot/+/+/+", 1) == theirs
    packet = connect_packet(
        "citysense-ingest", keepalive_s=30, clean_session=False, username="u", password="p"
    )
    assert packet[0] == 0x10 and packet[2:8] == b"\x00\x04MQTT" and packet[8] == 4
    assert packet[9] == 0x80 | 0x40  # user name and password, clean session off


topics = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00+#"),
    min_size=1,
    max_size=60,
)
payloads = st.binary(max_size=20_000)  # past 127 and 16,383: two and three length bytes


@st.composite
def streams(draw: st.DrawFn) -> tuple[list[Publish], bytes, list[int]]:
    messages = [
        Publish(draw(topics), draw(payloads), qos, draw(st.integers(1, 65535)) if qos else 0)
        for qos in draw(st.lists(st.sampled_from([0, 1]), min_size=1, max_size=8))
    ]
    data = b"".join(paho_publish(m.topic, m.payload, m.qos, m.mid) for m in messages)
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=6)))
    return messages, data, cuts


@settings(max_examples=200, deadline=None)
@given(streams())
def test_any_split_of_the_stream_gives_the_same_messages(
    case: tuple[list[Publish], bytes, list[int]],
) -> None:
    expected, data, cuts = case
    buf = bytearray()
    got: list[Publish | Control] = []
    for start, stop in zip([0, *cuts], [*cuts, len(data)], strict=True):
        buf += data[start:stop]
        packets, used = parse(buf)
        got += packets
        del buf[:used]
    assert got == expected and not buf


def test_a_packet_cut_in_its_length_bytes_waits_for_the_rest() -> None:
    packet = paho_publish("iot/river/r1/telemetry", b"x" * 300, 1, 7)
    assert parse(packet[:2]) == ([], 0)
    packets, used = parse(packet + packet[:3])
    assert packets == [Publish("iot/river/r1/telemetry", b"x" * 300, 1, 7)]
    assert used == len(packet)


def test_retained_and_duplicate_flags_do_not_change_what_is_read() -> None:
    packet = bytearray(paho_publish("a/b", b"{}", 1, 9, retain=True))
    packet[0] |= 0x08  # DUP: a redelivery
    assert parse(packet)[0] == [Publish("a/b", b"{}", 1, 9)]


def test_control_packets_and_their_fields() -> None:
    packets, _ = parse(b"\x20\x02\x01\x00" + b"\x90\x03\x00\x01\x01" + b"\xd0\x00")
    assert packets == [
        Control(CONNACK, b"\x01\x00"),
        Control(SUBACK, b"\x00\x01\x01"),
        Control(PINGRESP, b""),
    ]
    assert connack_result(b"\x01\x00") == (True, 0)
    assert connack_result(b"\x00\x05") == (False, 5)
    assert suback_codes(b"\x00\x01\x80") == (1, [0x80])


def test_pubacks_are_concatenated_in_order() -> None:
    assert pubacks([1, 258]) == b"\x40\x02\x00\x01" + b"\x40\x02\x01\x02"
    assert pubacks([]) == b""


@pytest.mark.parametrize(
    "data",
    [
        b"\x30\xff\xff\xff\xff\x01",  # five length bytes
        b"\x34\x05\x00\x01ax\x00",  # QoS 2: never sent to a QoS 1 subscription
        b"\x30\x03\x00\x09a",  # topic longer than the packet
        b"\x32\x03\x00\x01a",  # QoS 1 without a message id
        b"\x30\x04\x00\x02\xff\xfe",  # topic not UTF-8
        b"\x82\x02\x00\x01",  # a SUBSCRIBE from the broker
        b"\x20\x01\x00",  # CONNACK of one byte (checked when read)
    ],
)
def test_malformed_input_is_a_protocol_error(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        packets, _ = parse(data)
        for p in packets:
            if isinstance(p, Control) and p.type == CONNACK:
                connack_result(p.body)


def test_remaining_length_of_four_bytes() -> None:
    packet = paho_publish("t", b"p" * 2_100_000, 0, 0)  # over 2,097,151: four length bytes
    assert all(b & 0x80 for b in packet[1:4]) and not packet[4] & 0x80
    (message,), used = parse(packet)
    assert isinstance(message, Publish) and len(message.payload) == 2_100_000
    assert used == len(packet)
