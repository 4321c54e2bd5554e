"""One persistent MQTT session per partition a worker owns (issue 16, ``CITYSENSE_BROKER=nats``).

A partition's messages wait in its own session (client id ``{CITYSENSE_MQTT_CLIENT_ID}-p{p}``,
filter ``iot/{p}/+/+/+``) whoever owns it: when its lease moves to another worker, that worker
opens the same session and reads what is left, and the broker's client-id takeover cuts off a
former owner still connected (a second fence, beside the lease's epoch). ``assign`` says which
partitions to read; ``run`` keeps exactly those sessions open, each an ``MqttConsumer`` whose
acknowledgement tokens name its partition (``AckRouter``), all feeding one pipeline.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from ingest.mqtt.acks import AckRouter
from ingest.mqtt.session import Handler, MqttConsumer
from ingest.settings import Settings

STRIDE = 1024  # above the largest CITYSENSE_PARTITIONS (settings): a token's partition is t % it


def partition_filter(p: int) -> str:
    """The topic filter of partition ``p`` (the broker inserts the partition, ops/nats.py)."""
    return f"iot/{p}/+/+/+"


class PartitionSessions:
    """Keeps one ``MqttConsumer`` open per assigned partition."""

    def __init__(self, settings: Settings, handle: Handler, held: Callable[[], int]) -> None:
        self._settings = settings
        self._handle = handle
        self._held = held
        self.acks = AckRouter(STRIDE)
        self.consumers: dict[int, MqttConsumer] = {}
        self._wanted: set[int] = set()
        self._changed = asyncio.Event()

    def assign(self, partitions: set[int]) -> None:
        """Read exactly ``partitions`` from now on (opened and closed by ``run``)."""
        if partitions != self._wanted:
            self._wanted = set(partitions)
            self._changed.set()

    def _consumer(self, p: int) -> MqttConsumer:
        client_id = f"{self._settings.mqtt_client_id}-p{p}"
        settings = self._settings.model_copy(update={"mqtt_client_id": client_id})
        return MqttConsumer(
            settings,
            self._handle,
            self.acks.tracker(p),
            held=self._held,
            topic_filter=partition_filter(p),
        )

    async def run(self) -> None:
        """Open and close sessions as ``assign`` says, until cancelled (then all are closed)."""
        async with asyncio.TaskGroup() as tg:
            tasks: dict[int, asyncio.Task[None]] = {}
            try:
                while True:
                    await self._changed.wait()
                    self._changed.clear()
                    for p in sorted(tasks.keys() - self._wanted):
                        self.consumers.pop(p).release()  # unacknowledged: the next owner's
                        with contextlib.suppress(asyncio.CancelledError):
                            await tasks.pop(p)
                        self.acks.forget(p)
                    for p in sorted(self._wanted - tasks.keys()):
                        consumer = self.consumers[p] = self._consumer(p)
                        tasks[p] = tg.create_task(consumer.run(), name=f"mqtt-partition-{p}")
            finally:
                for p, consumer in self.consumers.items():
                    consumer.release()
                    tasks[p].cancel()
