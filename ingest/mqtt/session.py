"""The MQTT side: a persistent QoS 1 session, acknowledging each message once it is durable.

A fixed client id with clean session off makes the broker keep our subscription and queue
messages while we are away. PUBACKs are sent only when the pipeline reports a message safe
(``ingest/mqtt/acks.py``): a message lost in our memory by a crash is delivered again. The
broker's in-flight window (``max_inflight_messages``) bounds how many unacknowledged QoS 1
messages we hold, so a slow InfluxDB slows the broker's sending, not our memory; past
``PAUSE_ABOVE`` unacknowledged messages (QoS 0 ones are not windowed) the socket is not read
until acknowledgements catch up.

Subscription: a plain ``iot/+/+/+`` by default. Mosquitto 2.0.11 restores a persistent
session's plain subscription after a broker restart but not a shared one
(``$share/{group}/...``), so with a shared subscription what devices publish between the
broker's restart and our re-subscribe is lost; set ``mqtt_share_group`` only to split load
over several processes, accepting that gap (README, "Delivery guarantee").

The wire: an asyncio protocol over ``ingest/mqtt/codec.py`` rather than aiomqtt/paho — paho's
receive path was half of the service's CPU (benchmarks/README.md). Each chunk the socket
gives is parsed in one go and every PUBLISH in it handed to the pipeline synchronously: no
per-message task, future or queue. Lost connections are retried with jittered exponential
backoff, as aiomqtt's reconnect example does; a silent broker is detected by keepalive.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from typing import Any

from devices.topics import DEVICE_TOPIC_FILTER, PARTITIONED_TOPIC_FILTER, shared_filter
from ingest.mqtt.acks import AckTracker
from ingest.mqtt.codec import (
    CONNACK,
    CONNACK_REFUSALS,
    DISCONNECT_PACKET,
    PINGREQ_PACKET,
    SUBACK,
    SUBACK_FAILURE,
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
from ingest.mqtt.nodes import BrokerNodes
from ingest.mqtt.tls import mqtt_tls_context
from ingest.settings import Settings

log = logging.getLogger(__name__)

# (topic, payload, ack token); must not block and must not raise (the pipeline catches).
Handler = Callable[[str, bytes, int], None]

KEEPALIVE_S = 30
CONNECT_TIMEOUT_S = 10.0
CLOSE_TIMEOUT_S = 2.0
# Unacknowledged messages held: the broker's QoS 1 window is 20,000 (mosquitto.conf), so
# only a flood of QoS 0 messages, or a smaller window misconfigured higher, reaches these.
PAUSE_ABOVE = 50_000
RESUME_BELOW = 25_000
RESUME_POLL_S = 0.5
SUBSCRIBE_MID = 1


class ConnectRefused(ConnectionError):
    """The broker answered CONNECT with a refusal (bad password, not authorised, ...)."""


def backoff_delay(attempt: int, initial: float = 0.5, maximum: float = 30.0) -> float:
    """Full-jitter exponential backoff: uniform in [0, min(maximum, initial·2^attempt)]."""
    return random.uniform(0, min(maximum, initial * 2**attempt))


def subscription(settings: Settings) -> str:
    """The topic filter the service subscribes to (see the module docstring)."""
    group = settings.mqtt_share_group
    # A NATS cluster delivers iot/{partition}/{kind}/{id}/{channel} (ingest/ops/nats.py).
    topics = PARTITIONED_TOPIC_FILTER if settings.broker == "nats" else DEVICE_TOPIC_FILTER
    return shared_filter(group, topics) if group else topics


class _Wire(asyncio.Protocol):
    """One TCP connection to the broker: bytes in → packets; PUBLISHes to ``on_publish``."""

    def __init__(self, on_publish: Callable[[Publish], None], after_chunk: Callable[[], None]):
        self._on_publish = on_publish
        self._after_chunk = after_chunk
        self._loop = asyncio.get_running_loop()
        self._buf = bytearray()
        self._waiting: dict[int, asyncio.Future[Control]] = {}
        self.transport: asyncio.Transport | None = None
        self.closed: asyncio.Future[None] = self._loop.create_future()
        self.last_heard = self._loop.time()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.last_heard = self._loop.time()
        buf = self._buf
        if buf:
            buf += data
        try:
            packets, used = parse(buf if buf else data)
        except ProtocolError as e:
            self.fail(e)
            return
        if buf:
            del buf[:used]
        elif used < len(data):
            buf += memoryview(data)[used:]
        on_publish = self._on_publish
        for packet in packets:
            if type(packet) is Publish:
                on_publish(packet)
            elif isinstance(packet, Control):
                self._control(packet)
        self._after_chunk()

    def _control(self, packet: Control) -> None:
        waiter = self._waiting.pop(packet.type, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(packet)
        # PINGRESP needs nothing: hearing anything at all is what keepalive checks.

    async def expect(self, packet_type: int) -> Control:
        """The next packet of this type (CONNACK, SUBACK)."""
        if self.closed.done():
            raise ConnectionError("connection closed during the handshake")
        waiter: asyncio.Future[Control] = self._loop.create_future()
        self._waiting[packet_type] = waiter
        return await waiter  # connection_lost fails it

    def send(self, data: bytes) -> None:
        """Write, unless the connection is gone (what it carried is then moot)."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def fail(self, error: Exception) -> None:
        """Drop the connection at once (a protocol error, a silent broker)."""
        log.warning("closing the MQTT connection: %s", error)
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        for waiter in self._waiting.values():
            if not waiter.done():
                waiter.set_exception(ConnectionError("connection closed during the handshake"))
        self._waiting.clear()


class MqttConsumer:
    """Reads device messages and hands each to ``handle`` with its ack token.

    Shutdown is two steps so the last acknowledgements can still go out: ``stop_reading``
    (no more messages are taken), then, once the pipeline has made what it took durable,
    ``release`` (DISCONNECT).
    """

    def __init__(
        self,
        settings: Settings,
        handle: Handler,
        acks: AckTracker | None = None,
        held: Callable[[], int] | None = None,
        topic_filter: str | None = None,
    ):
        self._settings = settings
        self._topic_filter = topic_filter  # default: ``subscription(settings)``
        self._handle = handle
        self.acks = acks or AckTracker()
        # Messages taken and not yet durable, of this connection and of earlier ones (which a
        # reconnect does not free: they still sit in batches): what the pause bounds.
        self._held = held or (lambda: self.acks.unacknowledged)
        self.connected = False
        self.sessions = 0  # successful connect-and-subscribe rounds; > 1 means it reconnected
        self._reading = True
        self._paused = False
        self._wire: _Wire | None = None
        self._release = asyncio.Event()
        self.nodes = BrokerNodes(settings)

    @property
    def reading_live(self) -> bool:
        """Connected and reading (not paused for backpressure, not stopping)."""
        return self.connected and self._reading and not self._paused

    def stop_reading(self) -> None:
        """Take no more messages (those already taken are still acknowledged when safe).

        Messages are handled synchronously as they are parsed, so none is ever half-handled.
        """
        self._reading = False
        if self._wire is not None and self._wire.transport is not None:
            with contextlib.suppress(RuntimeError):  # already closing
                self._wire.transport.pause_reading()

    def release(self) -> None:
        """Disconnect; unacknowledged messages stay with the broker for the next session."""
        self.stop_reading()
        self._release.set()

    async def run(self) -> None:
        """Consume until released (or cancelled)."""
        topic_filter = self._topic_filter or subscription(self._settings)
        attempt = 0
        try:
            while not self._release.is_set():
                sessions = self.sessions
                try:
                    await self._session(topic_filter)
                    return
                except (OSError, ProtocolError, TimeoutError) as e:  # ConnectionError is OSError
                    if not self._reading:
                        return  # nothing more to acknowledge on a lost connection
                    if self.sessions > sessions:
                        attempt = 0  # it had worked: start the backoff over
                    delay = backoff_delay(attempt)
                    attempt += 1
                    self.nodes.failed()  # the next node of a cluster, if there is one
                    # A refusal is the operator's to fix (password, ACL): say so louder.
                    level = logging.ERROR if isinstance(e, ConnectRefused) else logging.WARNING
                    log.log(level, "MQTT connection failed (%s); retrying in %.1f s", e, delay)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._release.wait(), delay)
        finally:
            self.connected = False

    async def _session(self, topic_filter: str) -> None:
        """Connect, subscribe, keep the connection alive until released; raise when lost."""
        s = self._settings
        host, port = self.nodes.current
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            _, wire = await loop.create_connection(
                lambda: _Wire(self._received, self._after_chunk),
                host,
                port,
                ssl=mqtt_tls_context(s),  # None: plain TCP (CITYSENSE_MQTT_TLS)
            )
        self._wire = wire
        self._paused = False
        # A new connection: what the old one received and did not acknowledge comes again.
        self.acks.connected(lambda mids: self._send_acks(wire, mids))
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                await self._handshake(wire, topic_filter)
            self.connected = True
            self.sessions += 1
            self._after_chunk()  # still holding an earlier connection's messages: pause now
            log.info(
                "subscribed to %s on %s:%d as %s",
                topic_filter,
                host,
                port,
                s.mqtt_client_id,
            )
            await self._keep_alive(wire)
        finally:
            self.connected = False
            self.acks.disconnected()
            self._wire = None
            if wire.transport is not None:
                wire.transport.abort()

    async def _handshake(self, wire: _Wire, topic_filter: str) -> None:
        s = self._settings
        password = s.mqtt_password.get_secret_value() if s.mqtt_password else None
        # Sending and then waiting is race-free: the answer is read on this loop, after we yield.
        wire.send(
            connect_packet(
                s.mqtt_client_id,
                keepalive_s=KEEPALIVE_S,
                clean_session=False,
                username=s.mqtt_username,
                password=password,
            )
        )
        host, port = self.nodes.current
        present, code = connack_result((await wire.expect(CONNACK)).body)
        if code:
            raise ConnectRefused(f"broker refused CONNECT: {CONNACK_REFUSALS.get(code, code)}")
        # A resumed session's queued messages start to flow now, before the SUBACK.
        log.info(
            "MQTT connected to %s:%d as %s (session %s)",
            host,
            port,
            s.mqtt_client_id,
            "resumed" if present else "new",
        )
        wire.send(subscribe_packet(SUBSCRIBE_MID, topic_filter, qos=1))
        _, granted = suback_codes((await wire.expect(SUBACK)).body)
        if not granted or granted[0] == SUBACK_FAILURE:
            raise ConnectRefused(f"broker refused the subscription to {topic_filter}")

    async def _keep_alive(self, wire: _Wire) -> None:
        """PINGREQ every half keepalive; return on release (after DISCONNECT), raise on loss."""
        released = asyncio.ensure_future(self._release.wait())
        waits: list[asyncio.Future[Any]] = [released, wire.closed]
        loop = asyncio.get_running_loop()
        ping_at = loop.time() + KEEPALIVE_S / 2
        try:
            while True:
                # While paused, look often whether what is held has drained (messages of an
                # earlier connection free no acknowledgement here to resume on).
                wait_s = min(ping_at - loop.time(), RESUME_POLL_S if self._paused else KEEPALIVE_S)
                done, _ = await asyncio.wait(
                    waits, timeout=max(0.0, wait_s), return_when=asyncio.FIRST_COMPLETED
                )
                if released in done:
                    await self._disconnect(wire)
                    return
                if wire.closed.done():
                    raise ConnectionError("the broker closed the connection")
                self._maybe_resume(wire)
                if loop.time() < ping_at:
                    continue
                ping_at = loop.time() + KEEPALIVE_S / 2
                # While reading is paused the broker's PINGRESPs wait unread in the socket:
                # its silence then says nothing (judging it so reconnected, and a new window
                # came on top of the held one). The PINGREQs still go out, so the broker keeps
                # the connection.
                silent_s = loop.time() - wire.last_heard
                if not self._paused and silent_s > KEEPALIVE_S * 1.5:
                    raise ConnectionError(f"nothing from the broker for {silent_s:.0f} s")
                wire.send(PINGREQ_PACKET)
        finally:
            released.cancel()

    @staticmethod
    async def _disconnect(wire: _Wire) -> None:
        """DISCONNECT, then let the broker close first.

        Closing our end while bytes we have not read sit in the socket (reading is paused
        at stop) makes the kernel send a reset, and the broker may then drop the last
        PUBACKs unread — measured: a test saw 18 of 20 final acknowledgements lost. So:
        half-close after DISCONNECT, read (and ignore) until the broker's end-of-file.
        """
        wire.send(DISCONNECT_PACKET)
        transport = wire.transport
        if transport is None or transport.is_closing():
            return
        transport.resume_reading()
        if transport.can_write_eof():
            transport.write_eof()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(wire.closed), CLOSE_TIMEOUT_S)

    # -- the hot path: called from data_received, once per message / per chunk ---------------

    def _received(self, packet: Publish) -> None:
        if not self._reading:
            return  # not acknowledged: the broker sends it again next session
        token = self.acks.received(packet.mid, packet.qos)
        self._handle(packet.topic, packet.payload, token)

    def _after_chunk(self) -> None:
        transport = self._wire.transport if self._wire is not None else None
        if (
            self._reading  # after stop, reading continues only to see the broker's goodbye
            and self.connected  # the handshake's answers must be read whatever is held
            and not self._paused
            and self._held() > PAUSE_ABOVE
            and transport is not None
        ):
            transport.pause_reading()
            self._paused = True

    def _send_acks(self, wire: _Wire, mids: list[int]) -> None:
        if mids:
            wire.send(pubacks(mids))
        self._maybe_resume(wire)

    def _maybe_resume(self, wire: _Wire) -> None:
        if self._paused and self._held() < RESUME_BELOW and self._reading:
            self._paused = False
            # Unheard while paused through no fault of the broker's: judge it from now on.
            wire.last_heard = asyncio.get_running_loop().time()
            if wire.transport is not None and not wire.transport.is_closing():
                wire.transport.resume_reading()
