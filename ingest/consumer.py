"""The MQTT side: a persistent QoS 1 session on the shared device subscription.

A fixed client id with clean session off makes the broker keep our subscription and queue
messages while we are away; the ``$share/{group}/`` prefix lets several ingest processes
split the load. Lost connections are retried with jittered exponential backoff, as aiomqtt's
own reconnect example does.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable

import aiomqtt

from devices.topics import shared_filter
from ingest.settings import Settings

log = logging.getLogger(__name__)

Handler = Callable[[str, bytes], Awaitable[None]]


def backoff_delay(attempt: int, initial: float = 0.5, maximum: float = 30.0) -> float:
    """Full-jitter exponential backoff: uniform in [0, min(maximum, initial·2^attempt)]."""
    return random.uniform(0, min(maximum, initial * 2**attempt))


class MqttConsumer:
    """Reads device messages and hands each to ``handle``; reconnects until cancelled."""

    def __init__(self, settings: Settings, handle: Handler) -> None:
        self._settings = settings
        self._handle = handle
        self.connected = False
        self.sessions = 0  # successful connect-and-subscribe rounds; > 1 means it reconnected

    def _client(self) -> aiomqtt.Client:
        s = self._settings
        return aiomqtt.Client(
            s.mqtt_host,
            s.mqtt_port,
            identifier=s.mqtt_client_id,
            clean_session=False,
            username=s.mqtt_username,
            password=s.mqtt_password.get_secret_value() if s.mqtt_password else None,
            protocol=aiomqtt.ProtocolVersion.V311,
            keepalive=30,
        )

    async def run(self) -> None:
        """Consume until cancelled."""
        topic_filter = shared_filter(self._settings.mqtt_share_group)
        attempt = 0
        while True:
            try:
                async with self._client() as client:
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
                    async for message in client.messages:
                        payload = message.payload
                        if not isinstance(payload, bytes):  # paho always gives bytes
                            payload = str(payload).encode()
                        await self._handle(message.topic.value, payload)
            except aiomqtt.MqttError as e:
                delay = backoff_delay(attempt)
                attempt += 1
                log.warning("MQTT connection lost (%s); reconnecting in %.1f s", e, delay)
                await asyncio.sleep(delay)
            finally:
                self.connected = False
