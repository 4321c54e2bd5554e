"""The per-message path: decode, encode, evaluate, batch; rejections to the dead-letter buffer.

Synchronous on purpose: the consumer calls ``handle`` for each message as it parses them, so
a message costs no task, future or queue hop (benchmarks/README.md). Nothing here waits;
what bounds memory is the broker's window of unacknowledged messages (``ingest/intake/batcher.py``).
"""

from __future__ import annotations

import logging
import time

from ingest.alerts.alerting import Alerting
from ingest.intake.batcher import Batcher
from ingest.intake.congestion import CONGESTION_MEASUREMENT, SegmentSpeeds
from ingest.intake.decode import Decoded, Decoder, Reason, Rejection
from ingest.intake.ledger import Ledger
from ingest.intake.lineprotocol import LineEncoder, measurement_of
from ingest.intake.plates import redact_plates
from ingest.intake.skew import ClockSkew
from ingest.sinks.deadletters import MAX_KEPT_BYTES, DeadLetterBuffer, NewDeadLetter

log = logging.getLogger(__name__)

# When a backlog is found, samples read this far back are dropped: the read clock decides once
# per window (2 s, closed within a tick of 1 s), so they may be the backlog's first messages.
SKEW_FORGET_MS = 5_000


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
        skew: ClockSkew | None = None,
        congestion: SegmentSpeeds | None = None,
    ) -> None:
        self._decoder = decoder
        self._encoder = encoder
        self._batcher = batcher
        self._dead_letters = dead_letters
        self._ledger = ledger
        self._alerting = alerting
        self._skew = (
            skew  # each device's clock against ours, for maintainers (ingest/intake/skew.py)
        )
        self._congestion = congestion  # road segments' speeds (ingest/intake/congestion.py)
        self._backlog = False  # the read clock's verdict at the last message
        self.rule_failures = 0  # messages the rule engine raised on (their points are kept)

    @property
    def in_flight(self) -> int:
        """Messages received and not yet written or dead-lettered."""
        pending_alerts = self._alerting.pending_points if self._alerting else 0
        return self._batcher.in_flight + self._dead_letters.pending + pending_alerts

    def handle(self, topic: str, payload: bytes, token: int | None = None) -> None:
        """Process one MQTT message; ``token`` is reported safe once it is durable. Never raises."""
        self._ledger.received += 1
        now_ms = time.time_ns() // 1_000_000
        try:
            self._handle(topic, payload, token, now_ms)
        except Exception as e:
            # A bug of ours: keep the message for inspection rather than stop the service, and
            # give its token an end, or every acknowledgement behind it would wait forever.
            log.exception("failed on a message on %s", topic)
            detail = f"{type(e).__name__}: {e}"
            self._reject(now_ms, topic, Rejection(Reason.INTERNAL_ERROR, detail), payload, token)

    def _handle(self, topic: str, payload: bytes, token: int | None, now_ms: int) -> None:
        result = self._decoder.decode(topic, payload, now_ms)
        if isinstance(result, Rejection):
            self._reject(now_ms, topic, result, payload, token)
            return
        line = self._encoder.encode(result)
        measurement = measurement_of(result.kind, result.channel)
        if self._congestion is not None:
            # Ahead of the reading's point, so in its batch or an earlier one: durable no later
            # than the reading is acknowledged.
            self._add_congestion(self._congestion, result, topic)
        if self._alerting is not None:
            try:
                skew = self._skew.skew_ms(result.device.id) if self._skew is not None else None
                transitions = self._alerting.observe(
                    result.device, result.channel, result.message, result.ts_ms, now_ms, skew
                )
            except Exception:
                # A rule's bug must not cost the reading: store the point, log the failure.
                self.rule_failures += 1
                log.exception("the rule engine failed on a message on %s", topic)
                transitions = []
        # Before the point is handed on (nothing after that may raise: it would be handled
        # twice); after ``observe``, which has told the read clock of this message.
        if self._skew is not None and result.message.ts is not None:
            self._measure_skew(self._skew, result.device.id, result.ts_ms, now_ms)
        if self._alerting is not None:
            # The point (and so the acknowledgement) waits until the alert store has what the
            # message caused and an engine state that has seen it (ingest/alerts/alerting.py): a
            # message the broker will not send again is never lost to the rules nor judged twice.
            self._alerting.take(transitions, (line, measurement, token), result.device.id)
            return
        self._batcher.add(line, measurement, token)

    def _add_congestion(self, congestion: SegmentSpeeds, result: Decoded, topic: str) -> None:
        try:
            line = congestion.line(result)
        except Exception:  # a bug of ours must not cost the reading
            log.exception("the congestion index failed on a message on %s", topic)
            return
        if line is not None:
            self._batcher.add(line, CONGESTION_MEASUREMENT, own=True)

    def _measure_skew(self, skew: ClockSkew, device_id: str, ts_ms: int, now_ms: int) -> None:
        """A sample of the device's clock (its own stamp, not one given on receipt), unless
        what we read now arrives late: a backlog, as the read clock judges it."""
        backlog = self._alerting is not None and self._alerting.read_clock.backlog
        if backlog and not self._backlog:
            # Found at the end of the read clock's window: that window's samples were late too.
            skew.forget_since(now_ms - SKEW_FORGET_MS)
        self._backlog = backlog
        if not backlog:
            skew.saw(device_id, ts_ms, now_ms)

    def _reject(
        self, now_ms: int, topic: str, rejection: Rejection, payload: bytes, token: int | None
    ) -> None:
        self._ledger.rejected[rejection.reason] += 1
        # Cut to what is kept at once (a waiting row must not hold 256 KiB until its commit),
        # and no plate in clear in what is kept: rejected input may be anything.
        kept = redact_plates(payload[:MAX_KEPT_BYTES], self._encoder.hash_plate)
        self._dead_letters.add(
            NewDeadLetter(
                now_ms, topic, rejection.reason, rejection.detail, kept, token, len(payload)
            )
        )
