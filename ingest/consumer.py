"""The MQTT side: a persistent QoS 1 session, acknowledging each message once it is durable.

A fixed client id with clean session off makes the broker keep our subscription and queue
messages while we are away. PUBACKs are sent by hand (paho's ``manual_ack``) only when the
pipeline reports a message safe (``ingest/acks.py``): a message lost in our memory by a crash
is delivered again. The broker's in-flight window (``max_inflight_messages``) bounds how many
unacknowledged messages we hold, so a slow InfluxDB slows the broker's sending, not our memory.

Subscription: a plain ``iot/+/+/+`` by default. Mosquitto 2.0.11 restores a persistent
session's plain subscription after a broker restart but not a shared one
(``$share/{group}/...``), so with a shared subscription what devices publish between the
broker's restart and our re-subscribe is lost; set ``mqtt_share_group`` only to split load
over several processes, accepting that gap (README, "Delivery guarantee").

Lost connections are retried with jittered exponential backoff, as aiomqtt's own reconnect
example does. aiomqtt drives paho for us; manual acknowledgement is reached through its paho
client (``Client._client``), a private attribute of the pinned aiomqtt 2.5.1 — a test checks
that a message not acknowledged is delivered again, so an upgrade that breaks this fails it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
from collections.abc import Awaitable, Callable

import aiomqtt

from devices.topics import DEVICE_TOPIC_FILTER, shared_filter
from ingest.acks import AckTracker
from ingest.settings import Settings

log = logging.getLogger(__name__)

Handler = Callable[[str, bytes, int], Awaitable[None]]
HANDLING_GRACE_S = 5.0  # at stop, how long the message in hand may take to be handled


def backoff_delay(attempt: int, initial: float = 0.5, maximum: float = 30.0) -> float:
    """Full-jitter exponential backoff: uniform in [0, min(maximum, initial·2^attempt)]."""
    return random.uniform(0, min(maximum, initial * 2**attempt))


def subscription(settings: Settings) -> str:
    """The topic filter the service subscribes to (see the module docstring)."""
    group = settings.mqtt_share_group
    return shared_filter(group) if group else DEVICE_TOPIC_FILTER


class MqttConsumer:
    """Reads device messages and hands each to ``handle`` with its ack token.

    Shutdown is two steps so the last acknowledgements can still go out: ``stop_reading``
    (no more messages are taken), then, once the pipeline has made what it took durable,
    ``release`` (DISCONNECT).
    """

    def __init__(self, settings: Settings, handle: Handler, acks: AckTracker | None = None):
        self._settings = settings
        self._handle = handle
        self.acks = acks or AckTracker()
        self.connected = False
        self.sessions = 0  # successful connect-and-subscribe rounds; > 1 means it reconnected
        self._stop_reading = asyncio.Event()
        self._release = asyncio.Event()
        self.reading_stopped = asyncio.Event()
        self._handling = asyncio.Lock()  # held while one message is being handled

    def stop_reading(self) -> None:
        """Take no more messages (those already taken are still acknowledged when safe)."""
        self._stop_reading.set()

    def release(self) -> None:
        """Disconnect; unacknowledged messages stay with the broker for the next session."""
        self._stop_reading.set()
        self._release.set()

    def _client(self) -> aiomqtt.Client:
        s = self._settings
        client = aiomqtt.Client(
            s.mqtt_host,
            s.mqtt_port,
            identifier=s.mqtt_client_id,
            clean_session=False,
            username=s.mqtt_username,
            password=s.mqtt_password.get_secret_value() if s.mqtt_password else None,
            protocol=aiomqtt.ProtocolVersion.V311,
            keepalive=30,
        )
        client._client.manual_ack_set(True)  # see the module docstring
        return client

    async def run(self) -> None:
        """Consume until released (or cancelled)."""
        topic_filter = subscription(self._settings)
        attempt = 0
        try:
            while not self._release.is_set():
                try:
                    async with self._client() as client:
                        self.acks.connected(functools.partial(client._client.ack, qos=1))
                        await client.subscribe(topic_filter, qos=1)
                        self.connected = True
                        self.sessions += 1
                        attempt = 0
                        log.info(
                            "subscribed to %s on %s:%d as %s",
                            topic_filter,
                            self._settings.mqtt_host,
                            self._settings.mqtt_port,
                            self._settings.mqtt_client_id,
                        )
                        await self._read_until_stopped(client)
                        await self._release.wait()
                        return
                except aiomqtt.MqttError as e:
                    self.connected = False
                    if self._stop_reading.is_set():
                        return  # nothing more to acknowledge on a lost connection
                    delay = backoff_delay(attempt)
                    attempt += 1
                    log.warning("MQTT connection lost (%s); reconnecting in %.1f s", e, delay)
                    await asyncio.sleep(delay)
        finally:
            self.connected = False
            self.reading_stopped.set()

    async def _read_until_stopped(self, client: aiomqtt.Client) -> None:
        reading = asyncio.create_task(self._read(client), name="mqtt-read")
        stopping = asyncio.create_task(self._stop_reading.wait(), name="mqtt-stop-reading")
        try:
            await asyncio.wait([reading, stopping], return_when=asyncio.FIRST_COMPLETED)
            # Do not cut a message's handling in half (the rule engine may have moved on and
            # its alert not yet be queued): wait for the one in hand, then stop — within a
            # bound, since handling waits while the writer is full.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(HANDLING_GRACE_S), self._handling:
                    reading.cancel()
        finally:
            reading.cancel()
            stopping.cancel()
            await asyncio.wait([reading, stopping])
        if not reading.cancelled() and (error := reading.exception()) is not None:
            raise error  # a lost connection: the MqttError goes to run()'s reconnect
        self.reading_stopped.set()

    async def _read(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            payload = message.payload
            if not isinstance(payload, bytes):  # paho always gives bytes
                payload = str(payload).encode()
            async with self._handling:
                token = self.acks.received(message.mid, message.qos)
                await self._handle(message.topic.value, payload, token)
