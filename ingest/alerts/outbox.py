"""Publishing citysense's own messages (alerts) over MQTT at QoS 1, on a connection of its own.

Kept apart from the consumer's connection so a burst of alerts never waits behind device
traffic, and so the consumer's session settings (shared subscription, persistent session)
stay about reading.

The messages come from the alert store's outbox (``announcements``), written in the same
transaction as the alert change they tell of: the publisher sends them oldest first and
deletes each batch once the broker has acknowledged its messages. A crash between the commit
and the publish loses nothing (they are sent after the restart; a crash after the broker's
PUBACK and before the delete sends a few again, which the payload's alert id and event let a
phone recognise), and a broker away for hours only makes the table longer — nothing waits
for it. ``put`` queues a message in memory instead, for callers without a store (tools, tests).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Protocol

import aiomqtt

from ingest.mqtt.nodes import BrokerNodes
from ingest.mqtt.session import backoff_delay
from ingest.mqtt.tls import mqtt_tls_context
from ingest.settings import Settings

log = logging.getLogger(__name__)

BATCH = 200  # messages read from the outbox table at a time
IDLE_S = 1.0  # with nothing to send, look at the table again this often (besides wake())


class AnnouncementSource(Protocol):
    """The alert store's outbox table (ingest/alerts/store.py)."""

    def pending_announcements(self, limit: int = ...) -> list[tuple[int, str, bytes]]: ...

    def sent_announcements(self, ids: Sequence[int]) -> None: ...


class MqttOutbox:
    """Sends the store's outbox (and ``put`` messages) at QoS 1; reconnects until cancelled."""

    def __init__(
        self,
        settings: Settings,
        client_id: str,
        source: AnnouncementSource | None = None,
        max_queued: int = 10_000,
        active: Callable[[], bool] | None = None,
        idle_s: float = IDLE_S,
    ) -> None:
        self._settings = settings
        self._nodes = BrokerNodes(settings)
        self._client_id = client_id
        self._source = source
        self._queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(max_queued)
        self._wake = asyncio.Event()
        self._backlog = 0  # outbox rows seen waiting at the last look
        # A cluster's workers share one outbox table: only the leader sends it (each row
        # once), and looks often, as the others' rows wake only their own publisher.
        self._active = active or (lambda: True)
        self._idle_s = idle_s
        self.published = 0

    def wake(self) -> None:
        """New rows are in the outbox: look now rather than at the next idle check."""
        self._wake.set()

    async def put(self, topic: str, payload: bytes) -> None:
        """Queue a message in memory (no store); waits if the queue is full."""
        await self._queue.put((topic, payload))
        self._wake.set()

    async def settle(self, timeout_s: float) -> None:
        """Wait (bounded) until everything waiting is sent; for an orderly stop."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._queue.join()
                source = self._source
                while (
                    source is not None
                    and self._active()
                    and await asyncio.to_thread(_any_pending, source)
                ):
                    self._wake.set()
                    await asyncio.sleep(0.05)

    @property
    def waiting(self) -> int:
        """Messages waiting for the broker (the outbox's as of the last look)."""
        return self._queue.qsize() + self._backlog

    async def run(self) -> None:
        """Publish until cancelled."""
        s = self._settings
        attempt = 0
        while True:
            host, port = self._nodes.current
            try:
                async with aiomqtt.Client(
                    host,
                    port,
                    identifier=self._client_id,
                    username=s.mqtt_username,
                    password=s.mqtt_password.get_secret_value() if s.mqtt_password else None,
                    protocol=aiomqtt.ProtocolVersion.V311,
                    tls_context=mqtt_tls_context(s),  # None: plain TCP (CITYSENSE_MQTT_TLS)
                ) as client:
                    attempt = 0
                    while True:
                        self._wake.clear()
                        sent = await self._send_queued(client) + await self._send_outbox(client)
                        if not sent:
                            with contextlib.suppress(TimeoutError):
                                await asyncio.wait_for(self._wake.wait(), self._idle_s)
            except aiomqtt.MqttError as e:
                delay = backoff_delay(attempt)
                attempt += 1
                self._nodes.failed()
                log.warning("alert publisher lost the broker (%s); retrying in %.1f s", e, delay)
                await asyncio.sleep(delay)

    async def _send_queued(self, client: aiomqtt.Client) -> int:
        n = 0
        while not self._queue.empty():
            topic, payload = self._queue._queue[0]  # type: ignore[attr-defined]  # peek
            await client.publish(topic, payload, qos=1)
            self._queue.get_nowait()  # only dropped once the broker has it
            self._queue.task_done()
            self.published += 1
            n += 1
        return n

    async def _send_outbox(self, client: aiomqtt.Client) -> int:
        if self._source is None or not self._active():
            return 0
        source = self._source
        try:
            rows = await asyncio.to_thread(source.pending_announcements, BATCH)
        except Exception:
            # The store is locked or its disk fails: the publisher must not die of it (the
            # rows stay; they are read again next time).
            log.exception("alert publisher could not read the outbox; trying again")
            return 0
        self._backlog = len(rows)
        done: list[int] = []
        try:
            for row_id, topic, payload in rows:
                await client.publish(topic, payload, qos=1)  # returns on the broker's PUBACK
                done.append(row_id)
                self.published += 1
        finally:
            # What the broker has is deleted even when the connection broke mid-batch; if
            # even that fails, those few are sent again later (at least once).
            if done:
                try:
                    await asyncio.to_thread(source.sent_announcements, done)
                except Exception:
                    log.exception("alert publisher could not mark %d as sent", len(done))
        self._backlog = max(0, self._backlog - len(done))
        return len(done)


def _any_pending(source: AnnouncementSource) -> bool:
    return bool(source.pending_announcements(1))
