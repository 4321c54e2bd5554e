"""One persistent MQTT session per partition a worker owns (issue 16, ``CITYSENSE_BROKER=nats``).

A partition's messages wait in its own session (client id ``session_id``,
filter ``iot/{p}/+/+/+``) whoever owns it: when its lease moves to another worker, that worker
opens the same session and reads what is left, and the broker's client-id takeover cuts off a
former owner still connected (a second fence, beside the lease's epoch). ``assign`` says which
partitions to read; ``run`` keeps exactly those sessions open, each an ``MqttConsumer`` whose
acknowledgement tokens name its partition (``AckRouter``), all feeding one pipeline.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import time
from collections.abc import Callable

from ingest.mqtt.acks import AckRouter
from ingest.mqtt.session import Handler, MqttConsumer
from ingest.settings import Settings

STRIDE = 1024  # above the largest CITYSENSE_PARTITIONS (settings): a token's partition is t % it


def session_id(settings: Settings, p: int) -> str:
    """The client id of partition ``p``'s persistent session, the same on every worker.

    NATS's MQTT layer lets any authenticated user take over any session by its client id
    (docs/architecture.md), and a takeover with a clean session wipes what the session held,
    acknowledged readings included. So the id carries a key derived from the device secret,
    which workers share and devices do not know (each has only its own derived password),
    and which is not rotated as the ingest password is: a new id would strand what the old
    session holds (review of issue 16, F3 and its re-review)."""
    secret = settings.dev_secret.get_secret_value().encode()
    key = hmac.new(secret, b"citysense partition sessions", hashlib.sha256).hexdigest()[:16]
    return f"{settings.mqtt_client_id}-{key}-p{p}"


def partition_filter(p: int) -> str:
    """The topic filter of partition ``p`` (the broker inserts the partition, ops/nats.py)."""
    return f"iot/{p}/+/+/+"


class PartitionSessions:
    """Keeps one ``MqttConsumer`` open per assigned partition."""

    def __init__(
        self,
        settings: Settings,
        handle: Handler,
        held: Callable[[], int],
        acks: AckRouter | None = None,
    ) -> None:
        self._settings = settings
        self._handle = handle
        self._held = held
        self.acks = acks or AckRouter(STRIDE)
        self.consumers: dict[int, MqttConsumer] = {}
        self._wanted: set[int] = set()
        self._changed = asyncio.Event()
        self._progress: dict[int, tuple[int, int]] = {}
        self._reading = True
        self._released = False

    def assign(self, partitions: set[int]) -> None:
        """Read exactly ``partitions`` from now on (opened and closed by ``run``)."""
        if partitions != self._wanted:
            self._wanted = set(partitions)
            self._changed.set()

    def progress(self) -> dict[int, tuple[int, int]]:
        """Each partition read: messages since its session opened here, and when the last
        came (wall ms); what ``cluster status`` shows."""
        return dict(self._progress)

    def _counting(self, p: int) -> Handler:
        handle, progress = self._handle, self._progress
        progress[p] = (0, 0)

        def counted(topic: str, payload: bytes, token: int) -> None:
            n, _ = progress.get(p, (0, 0))
            progress[p] = (n + 1, time.time_ns() // 1_000_000)
            handle(topic, payload, token)

        return counted

    def _consumer(self, p: int) -> MqttConsumer:
        client_id = session_id(self._settings, p)
        settings = self._settings.model_copy(update={"mqtt_client_id": client_id})
        return MqttConsumer(
            settings,
            self._counting(p),
            self.acks.tracker(p),
            held=self._held,
            topic_filter=partition_filter(p),
        )

    @property
    def connected(self) -> bool:
        """Every partition read is connected (none to read counts as connected)."""
        return all(c.connected for c in self.consumers.values())

    @property
    def reading_live(self) -> bool:
        """Reading every partition assigned, live (ingest/alerts/readclock.py)."""
        return bool(self.consumers) and all(c.reading_live for c in self.consumers.values())

    def stop_reading(self) -> None:
        """Take no more messages on any session; open no new one."""
        self._reading = False
        for consumer in self.consumers.values():
            consumer.stop_reading()

    def release(self) -> None:
        """Disconnect every session (an orderly stop, after the last acknowledgements)."""
        self._reading = False
        self._released = True
        self._changed.set()

    async def run(self) -> None:
        """Open and close sessions as ``assign`` says until ``release`` (then each session
        disconnects in order) or cancelled."""
        tasks: dict[int, asyncio.Task[None]] = {}
        try:
            async with asyncio.TaskGroup() as tg:
                while not self._released:
                    await self._changed.wait()
                    self._changed.clear()
                    if self._released:
                        break
                    for p in sorted(tasks.keys() - self._wanted):
                        self.consumers.pop(p).release()  # unacknowledged: the next owner's
                        with contextlib.suppress(asyncio.CancelledError):
                            await tasks.pop(p)
                        self.acks.forget(p)
                        self._progress.pop(p, None)
                    if not self._reading:
                        continue
                    for p in sorted(self._wanted - tasks.keys()):
                        consumer = self.consumers[p] = self._consumer(p)
                        tasks[p] = tg.create_task(consumer.run(), name=f"mqtt-partition-{p}")
                for consumer in self.consumers.values():
                    consumer.release()
        finally:
            for task in tasks.values():
                task.cancel()
