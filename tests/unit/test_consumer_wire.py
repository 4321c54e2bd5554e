"""The consumer against a scripted fake broker: what a real Mosquitto will not do on cue.

A broker that goes silent (keepalive must notice and reconnect) and one that sends a packet a
subscriber never gets (a protocol error must drop the connection, not the service). The
everyday protocol is tested against a real Mosquitto in tests/integration/test_mqtt_session.py.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import pytest

from ingest.mqtt import session as consumer_module
from ingest.mqtt.session import MqttConsumer
from ingest.settings import Settings

CONNACK_OK = b"\x20\x02\x00\x00"
SUBACK_QOS1 = b"\x90\x03\x00\x01\x01"

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


async def read_packet(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    first = (await reader.readexactly(1))[0]
    length, shift = 0, 0
    while True:
        byte = (await reader.readexactly(1))[0]
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    return first >> 4, await reader.readexactly(length)


class FakeBroker:
    """Accepts connections, answers CONNECT and SUBSCRIBE, then runs ``after`` (per attempt)."""

    def __init__(self, after: Script) -> None:
        self.after = after
        self.connections = 0
        self.received: list[int] = []  # packet types, all connections
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        attempt = self.connections
        try:
            kind, _ = await read_packet(reader)
            self.received.append(kind)
            writer.write(CONNACK_OK)
            kind, _ = await read_packet(reader)
            self.received.append(kind)
            writer.write(SUBACK_QOS1)
            await self.after(reader, writer, attempt)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()


async def run_until(
    broker: FakeBroker, condition: Callable[[MqttConsumer], bool], timeout_s: float
) -> MqttConsumer:
    port = await broker.start()
    settings = Settings(mqtt_port=port, mqtt_client_id="wire-test")
    got: list[tuple[str, bytes, int]] = []
    consumer = MqttConsumer(settings, lambda t, p, tok: got.append((t, p, tok)))
    task = asyncio.create_task(consumer.run())
    try:
        async with asyncio.timeout(timeout_s):
            while not condition(consumer):  # noqa: ASYNC110 - polling the consumer's counters
                await asyncio.sleep(0.02)
    finally:
        consumer.release()
        await asyncio.wait_for(task, 5)
        await broker.stop()
    return consumer


async def test_a_silent_broker_is_noticed_by_keepalive_and_reconnected(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(consumer_module, "KEEPALIVE_S", 1)
    monkeypatch.setattr(consumer_module, "backoff_delay", lambda attempt: 0.05)

    async def go_silent(reader: asyncio.StreamReader, _w: asyncio.StreamWriter, n: int) -> None:
        while True:  # read PINGREQs, never answer
            broker.received.append((await read_packet(reader))[0])

    broker = FakeBroker(go_silent)
    await run_until(broker, lambda c: c.sessions >= 2, timeout_s=6)
    assert broker.connections >= 2
    assert 12 in broker.received  # PINGREQ was sent before giving up


async def test_a_packet_a_subscriber_never_gets_drops_the_connection_not_the_service(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(consumer_module, "backoff_delay", lambda attempt: 0.05)

    async def misbehave(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        if n == 1:
            await asyncio.sleep(0.2)  # once subscribed
            writer.write(b"\x82\x02\x00\x01")  # a SUBSCRIBE, from the broker
        else:  # the next connection is fine: one message
            writer.write(b"\x30\x0a\x00\x03a/b" + b"hello")
        await reader.read()

    broker = FakeBroker(misbehave)
    consumer = await run_until(broker, lambda c: c.sessions >= 2 and c.acks.unacknowledged == 1, 5)
    assert broker.connections == 2 and consumer.sessions == 2


def qos0_publish(i: int) -> bytes:
    """A QoS 0 PUBLISH of ~1 KB on a/b (so one read of the socket holds few of them)."""
    body = b"\x00\x03a/b" + str(i).encode().ljust(1000, b".")
    length, out = len(body), bytearray([0x30])
    while True:
        byte, length = length & 0x7F, length >> 7
        out.append(byte | (0x80 if length else 0))
        if not length:
            break
    return bytes(out) + body


async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
    """QoS 0 messages as fast as the consumer reads them; PINGREQs answered (unread while the
    consumer is paused, as a real broker's would be)."""

    async def answer_pings() -> None:
        while True:
            kind, _ = await read_packet(reader)
            if kind == 12:
                writer.write(b"\xd0\x00")

    pinger = asyncio.create_task(answer_pings())
    try:
        i = 0
        while True:
            writer.write(b"".join(qos0_publish(i + k) for k in range(20)))
            i += 20
            await writer.drain()  # blocks while the consumer does not read
    finally:
        pinger.cancel()


async def stalled_consumer(
    broker: FakeBroker, seconds: float
) -> tuple[MqttConsumer, list[int], FakeBroker]:
    """A consumer whose sink never makes anything durable (held = every message taken)."""
    port = await broker.start()
    settings = Settings(mqtt_port=port, mqtt_client_id="wire-test")
    taken: list[int] = []
    consumer = MqttConsumer(settings, lambda t, p, tok: taken.append(tok), held=lambda: len(taken))
    task = asyncio.create_task(consumer.run())
    try:
        await asyncio.sleep(seconds)
    finally:
        consumer.release()
        await asyncio.wait_for(task, 5)
        await broker.stop()
    return consumer, taken, broker


async def test_a_paused_consumer_does_not_take_the_brokers_silence_for_loss(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 13 item 7: while paused, PINGRESPs are unread; the broker was judged silent, the
    reconnect cleared the pause and a new window came on top of the held one."""
    monkeypatch.setattr(consumer_module, "KEEPALIVE_S", 1)
    monkeypatch.setattr(consumer_module, "PAUSE_ABOVE", 200)
    monkeypatch.setattr(consumer_module, "RESUME_BELOW", 100)
    monkeypatch.setattr(consumer_module, "backoff_delay", lambda attempt: 0.05)
    consumer, taken, broker = await stalled_consumer(FakeBroker(flood), seconds=4)
    assert broker.connections == 1 and consumer.sessions == 1  # 8 keepalive periods, no loss
    assert 200 < len(taken) <= 200 + 300  # the bound, plus what one read of the socket held


async def test_the_bound_holds_across_a_reconnect(monkeypatch: pytest.MonkeyPatch) -> None:
    """The broker drops the connection while messages are held: the next connection must not
    bring a new window on top of them (they are still in memory, waiting for the sink)."""
    monkeypatch.setattr(consumer_module, "KEEPALIVE_S", 1)  # a paused reader notices at a ping
    monkeypatch.setattr(consumer_module, "PAUSE_ABOVE", 200)
    monkeypatch.setattr(consumer_module, "RESUME_BELOW", 100)
    monkeypatch.setattr(consumer_module, "backoff_delay", lambda attempt: 0.05)

    async def flood_then_drop(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        if n <= 3:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.7):
                    await flood(r, w, n)
            w.transport.abort()  # the connection drops (close would wait to flush)
            return
        await flood(r, w, n)

    _, taken, broker = await stalled_consumer(FakeBroker(flood_then_drop), seconds=4)
    assert broker.connections >= 3
    assert len(taken) <= 200 + 300
