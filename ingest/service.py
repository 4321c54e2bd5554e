"""``citysense serve``: the ingest service, its tasks, and their start-up and shutdown order.

Start-up: open the dead-letter store and the InfluxDB sink, then start the writer side before
the consumer, so the first message has somewhere to go. Shutdown (``stop`` set, e.g. SIGTERM):
stop consuming, seal the open batch, let the writer drain (at most ``shutdown_timeout_s``),
commit the last dead letters, close connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

from devices.registry import Registry
from ingest.alerting import Alerting
from ingest.batcher import Batcher
from ingest.consumer import MqttConsumer
from ingest.deadletters import DeadLetterBuffer, DeadLetterStore, store_path
from ingest.decode import Decoder
from ingest.delivery import Deliverer, drain
from ingest.ledger import Ledger
from ingest.lineprotocol import LineEncoder
from ingest.outbox import MqttOutbox
from ingest.pipeline import Pipeline
from ingest.plates import PlateHasher
from ingest.settings import Settings
from ingest.status import report_status, status_line
from ingest.writer import LineSink, open_sink
from rules import load_rules
from rules.store import AlertStore, sqlite_url

log = logging.getLogger(__name__)

SHUTDOWN_TIMEOUT_S = 15.0
ALERT_SETTLE_S = 5.0  # at shutdown, how long queued alert changes may take to go out


@dataclass
class ServiceState:
    """What a running service exposes to its caller (tests, later the HTTP API)."""

    ledger: Ledger = field(default_factory=Ledger)
    consumer: MqttConsumer | None = None
    alerting: Alerting | None = None
    started: asyncio.Event = field(default_factory=asyncio.Event)


async def _open_sink_retrying(settings: Settings, stop: asyncio.Event) -> LineSink | None:
    """The InfluxDB sink, retrying while InfluxDB is still starting; None if stopped first."""
    attempt = 0
    while not stop.is_set():
        try:
            return await open_sink(settings)
        except OSError as e:
            delay = min(10.0, 0.5 * 2**attempt)
            attempt += 1
            log.warning(
                "InfluxDB at %s not reachable (%s); retrying in %.1f s",
                settings.influx_url,
                e,
                delay,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
    return None


async def serve(
    settings: Settings, registry: Registry, stop: asyncio.Event, state: ServiceState | None = None
) -> ServiceState:
    """Run the ingest service until ``stop`` is set; return its final state."""
    state = state or ServiceState()
    ledger = state.ledger
    sink = await _open_sink_retrying(settings, stop)
    if sink is None:
        return state
    store = DeadLetterStore(store_path(settings.data_dir), settings.deadletter_max_rows)
    batcher = Batcher(settings.batch_size, settings.batch_interval_s, settings.max_pending_batches)
    dead_letters = DeadLetterBuffer(store, ledger.add_dead_lettered)
    decoder = Decoder(
        registry,
        max_payload_bytes=settings.max_payload_bytes,
        future_skew_ms=int(settings.future_skew_s * 1000),
        max_age_ms=int(settings.max_age_s * 1000),
    )
    encoder = LineEncoder(registry, PlateHasher(settings.plate_key.get_secret_value().encode()))
    deliverer = Deliverer(sink)
    alert_store = AlertStore(sqlite_url(settings.data_dir))
    outbox = MqttOutbox(settings, f"{settings.mqtt_client_id}-alerts")
    alerting = Alerting(
        load_rules(settings.rules, registry),
        registry,
        alert_store,
        outbox,
        deliverer,
        start_grace_s=settings.alert_start_grace_s,
        snapshot_interval_s=settings.alert_snapshot_interval_s,
        renotify_s=settings.alert_renotify_s,
    )
    state.alerting = alerting
    pipeline = Pipeline(decoder, encoder, batcher, dead_letters, ledger, alerting)
    consumer = MqttConsumer(settings, pipeline.handle)
    state.consumer = consumer
    try:
        async with asyncio.TaskGroup() as tg:
            writer = tg.create_task(
                drain(batcher, deliverer, dead_letters, ledger), name="influx-writer"
            )
            publishing = tg.create_task(outbox.run(), name="alert-publisher")
            applying = tg.create_task(alerting.run(), name="alert-apply")
            clock = tg.create_task(alerting.run_clock(), name="alert-clock")
            timer = tg.create_task(batcher.run_timer(), name="batch-timer")
            flusher = tg.create_task(dead_letters.run(), name="dead-letter-flush")
            reporter = tg.create_task(
                report_status(ledger, lambda: pipeline.in_flight, settings.status_interval_s),
                name="status-report",
            )
            reading = tg.create_task(consumer.run(), name="mqtt-consumer")
            state.started.set()
            await stop.wait()
            log.info("stopping: no more messages are read")
            reading.cancel()
            await asyncio.wait([reading])
            batcher.close()
            await asyncio.wait([timer])
            done, _ = await asyncio.wait([writer], timeout=SHUTDOWN_TIMEOUT_S)
            if not done:
                log.error(
                    "InfluxDB did not take the last %d points within %.0f s; giving up",
                    batcher.in_flight,
                    SHUTDOWN_TIMEOUT_S,
                )
                writer.cancel()
            dead_letters.close()
            await asyncio.wait([flusher])
            clock.cancel()
            await alerting.settle(ALERT_SETTLE_S)
            applying.cancel()
            await outbox.settle(ALERT_SETTLE_S)
            publishing.cancel()
            reporter.cancel()
    finally:
        with contextlib.suppress(Exception):
            await sink.close()
        store.close()
        alerting.save()
        alert_store.close()
    log.info("stopped: %s", status_line(ledger, pipeline.in_flight))
    return state
