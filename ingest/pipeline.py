"""The per-message path: decode, encode, batch; rejections to the dead-letter buffer."""

from __future__ import annotations

import time

from ingest.alerting import Alerting
from ingest.batcher import Batcher
from ingest.deadletters import DeadLetterBuffer, NewDeadLetter
from ingest.decode import Decoder, Rejection
from ingest.ledger import Ledger
from ingest.lineprotocol import LineEncoder, measurement_of


class Pipeline:
    """Handles each received message exactly once: into a batch or into the dead letters."""

    def __init__(
        self,
        decoder: Decoder,
        encoder: LineEncoder,
        batcher: Batcher,
        dead_letters: DeadLetterBuffer,
        ledger: Ledger,
        alerting: Alerting | None = None,
    ) -> None:
        self._decoder = decoder
        self._encoder = encoder
        self._batcher = batcher
        self._dead_letters = dead_letters
        self._ledger = ledger
        self._alerting = alerting

    @property
    def in_flight(self) -> int:
        """Messages received and not yet written or dead-lettered."""
        return self._batcher.in_flight + self._dead_letters.pending

    async def handle(self, topic: str, payload: bytes, token: int | None = None) -> None:
        """Process one MQTT message; ``token`` is reported safe once it is durable."""
        self._ledger.received += 1
        now_ms = time.time_ns() // 1_000_000
        result = self._decoder.decode(topic, payload, now_ms)
        if isinstance(result, Rejection):
            self._ledger.rejected[result.reason] += 1
            await self._dead_letters.add(
                NewDeadLetter(now_ms, topic, result.reason, result.detail, payload, token)
            )
            return
        if self._alerting is not None:
            await self._alerting.observe(
                result.device, result.channel, result.message, result.ts_ms
            )
        line = self._encoder.encode(result)
        await self._batcher.add(line, measurement_of(result.kind, result.channel), token)
