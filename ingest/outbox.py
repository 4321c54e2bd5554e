"""Publishing citysense's own messages (alerts) over MQTT at QoS 1, on a connection of its own.

Kept apart from the consumer's connection so a burst of alerts never waits behind device
traffic, and so the consumer's session settings (shared subscription, persistent session)
stay about reading. Messages wait in a bounded queue while the broker is away and are sent
in order once it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import aiomqtt

from ingest.consumer import backoff_delay
from ingest.mqtttls import mqtt_tls_context
from ingest.settings import Settings

log = logging.getLogger(__name__)


class MqttOutbox:
    """A queue of (topic, payload) drained to the broker at QoS 1; reconnects until cancelled."""

    def __init__(self, settings: Settings, client_id: str, max_queued: int = 10_000) -> None:
        self._settings = settings
        self._client_id = client_id
        self._queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(max_queued)
        self.published = 0

    async def put(self, topic: str, payload: bytes) -> None:
        """Queue a message; waits if the queue is full (the broker has been away long)."""
        await self._queue.put((topic, payload))

    async def settle(self, timeout_s: float) -> None:
        """Wait (bounded) until the queue is empty; for an orderly stop."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), timeout_s)

    @property
    def waiting(self) -> int:
        """Messages queued and not yet acknowledged by the broker."""
        return self._queue.qsize()

    async def run(self) -> None:
        """Publish queued messages until cancelled."""
        s = self._settings
        attempt = 0
        pending: tuple[str, bytes] | None = None
        while True:
            try:
                async with aiomqtt.Client(
                    s.mqtt_host,
                    s.mqtt_port,
                    identifier=self._client_id,
                    username=s.mqtt_username,
                    password=s.mqtt_password.get_secret_value() if s.mqtt_password else None,
                    protocol=aiomqtt.ProtocolVersion.V311,
                    tls_context=mqtt_tls_context(s),  # None: plain TCP (CITYSENSE_MQTT_TLS)
                ) as client:
                    attempt = 0
                    while True:
                        if pending is None:
                            pending = await self._queue.get()
                        await client.publish(pending[0], pending[1], qos=1)
                        pending = None  # only dropped once the broker has it
                        self.published += 1
                        self._queue.task_done()
            except aiomqtt.MqttError as e:
                delay = backoff_delay(attempt)
                attempt += 1
                log.warning("alert publisher lost the broker (%s); retrying in %.1f s", e, delay)
                await asyncio.sleep(delay)
