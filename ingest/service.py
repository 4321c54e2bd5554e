"""``citysense serve``: the ingest service, its tasks, and their start-up and shutdown order.

Start-up: open the dead-letter store and the InfluxDB sink, then start the writer side before
the consumer, so the first message has somewhere to go. Shutdown (``stop`` set, e.g. SIGTERM):
stop the API, stop taking messages (each is handled whole as it is read), store and tell the
last alert changes, seal the open batch, let the writer drain (at most ``SHUTDOWN_TIMEOUT_S``),
commit the last dead letters — each step acknowledging to the broker what it made durable —
then DISCONNECT, let the alert publisher finish, close.
At most about 5 + 5 + 15 + 5 + 5 s ≈ 35 s even with InfluxDB gone; a few hundred
milliseconds normally.

Why one module (over 400 lines): the order in which every task starts and stops is this
module's one idea; each part is built by its own room (``open_cases``, ``open_delivery``).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from dataclasses import dataclass, field

import aiohttp

from devices.registry import Registry
from devices.vendormap import VendorMapError, VendorMaps, check_devices, load_vendor_maps
from ingest.alerts.alerting import Alerting
from ingest.alerts.outbox import MqttOutbox
from ingest.alerts.store import ALERTS_FILE, AlertStore, store_url
from ingest.api import ApiContext, create_app
from ingest.api.series import influxql_rows
from ingest.api.server import ApiServer
from ingest.api.tokentable import open_tokens
from ingest.cases.parts import CaseParts, open_cases
from ingest.cluster.leases import Leases
from ingest.cluster.seat import Seat
from ingest.cluster.worker import Worker
from ingest.datadir import private_dir, private_file
from ingest.delivery.parts import DeliveryParts, open_delivery
from ingest.intake.batcher import Batcher
from ingest.intake.congestion import SegmentSpeeds
from ingest.intake.decode import Decoder
from ingest.intake.ledger import Ledger
from ingest.intake.lineprotocol import LineEncoder
from ingest.intake.plates import PlateHasher
from ingest.intake.skew import ClockSkew
from ingest.metrics import Metrics, Sources
from ingest.mqtt.acks import AckRouter, AckTracker
from ingest.mqtt.partitions import STRIDE, PartitionSessions
from ingest.mqtt.session import MqttConsumer
from ingest.people import PeopleFile
from ingest.pipeline import Pipeline
from ingest.settings import Settings
from ingest.sinks.deadletters import DeadLetterBuffer, DeadLetterStore, store_location
from ingest.sinks.delivery import Deliverer
from ingest.sinks.drain import Drain
from ingest.sinks.spool import Spool
from ingest.sinks.writer import LineSink, open_sink, ping_influx
from ingest.status import report_status, status_line
from rules import RuleSet, load_rules

log = logging.getLogger(__name__)

SHUTDOWN_TIMEOUT_S = 15.0
RELEASE_TIMEOUT_S = 5.0  # DISCONNECT after the last acknowledgements
API_STOP_TIMEOUT_S = 5.0  # open requests finish, live streams are cut (ingest/api/server.py)
ALERT_SETTLE_S = 5.0  # at shutdown, how long queued alert changes may take to go out


class StartRefused(Exception):
    """The settings ask for something the service must not do; the message says why."""


def refuse_unsafe(settings: Settings, rules: RuleSet) -> None:
    """Raise ``StartRefused`` for settings that would make the alerts wrong.

    A shared subscription on Mosquitto hands each device's messages round-robin to every
    process of the group, so every ``for``, rate, count and silence rule would see half the
    story, and every process would save its engine state under one key. Until partitioned
    scale-out exists, the two do not go together.
    """
    if settings.mqtt_share_group and len(rules) > 0:
        raise StartRefused(
            f"CITYSENSE_MQTT_SHARE_GROUP={settings.mqtt_share_group!r} with {len(rules)} alert "
            f"rules in {settings.rules}: a shared subscription splits each device's messages "
            "between processes, and the rules would judge half of them. Unset "
            "CITYSENSE_MQTT_SHARE_GROUP, or give the processes of the group an empty rule file."
        )


def vendor_maps(settings: Settings, registry: Registry) -> VendorMaps:
    """The vendors file's mappings, checked against the registry; ``StartRefused`` if broken.

    A broken file refuses the start, as a broken registry does: reading every vendor device's
    messages as our JSON would dead-letter all of them.
    """
    try:
        maps = load_vendor_maps(settings.vendors)
        check_devices(maps, registry, str(settings.vendors))
    except VendorMapError as e:
        raise StartRefused(str(e)) from None
    mapped = sum(1 for d in registry.devices.values() if d.model in maps.models)
    if maps.models:
        log.info("vendors %s: %d models, %d devices", settings.vendors, len(maps), mapped)
    return maps


@dataclass
class ServiceState:
    """What a running service exposes to its caller (tests, the demo)."""

    ledger: Ledger = field(default_factory=Ledger)
    consumer: MqttConsumer | PartitionSessions | None = None
    worker: Worker | None = None  # a cluster's worker (CITYSENSE_BROKER=nats)
    alerting: Alerting | None = None
    api_url: str | None = None
    spool: Spool | None = None
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


def _api_server(
    settings: Settings,
    registry: Registry,
    alerting: Alerting,
    alert_store: AlertStore,
    dead_letters: DeadLetterStore,
    http: aiohttp.ClientSession,
    consumer: MqttConsumer | PartitionSessions,
    metrics: Metrics,
    spool: Spool,
    drain: Drain,
    clock_skew: ClockSkew,
    leases: Leases | None,
    cases: CaseParts | None = None,
    delivery: DeliveryParts | None = None,
) -> ApiServer | None:
    """The HTTP API over this service's parts (None when disabled)."""
    if not settings.api_enabled:
        return None

    async def broker() -> str | None:
        return None if consumer.connected else "not connected to the broker"

    async def spooling() -> str | None:
        return drain.trouble  # a full or failing spool disk: messages held at the broker

    async def influx() -> str | None:
        return await ping_influx(http, settings.influx_url)

    async def store() -> str | None:
        await asyncio.to_thread(alert_store.count_by_state)
        return None

    people = PeopleFile(settings.workers, registry)
    if people.problem:
        log.error("no person's token will be accepted: %s", people.problem)

    def warnings() -> dict[str, str]:
        found = {"rules_state": p} if (p := alerting.state_problem) else {}
        return found | ({"people": people.problem} if people.problem else {})

    ctx = ApiContext(
        settings=settings,
        registry=registry,
        rules=alerting.rules,
        rules_path=settings.rules,
        alert_store=alert_store,
        dead_letters=dead_letters,
        tokens=open_tokens(settings),
        http=http,
        feed=alerting.feed,
        announce=alerting.announce_stored,  # ack/resolve write their messages themselves:
        announcements=alerting.announcements,  # in their own transaction (the outbox)
        probes={"broker": broker, "influxdb": influx, "alert_store": store, "spool": spooling},
        metrics=metrics,
        clock_skew=clock_skew,
        spool_size=lambda: spool.lines,
        warnings=warnings,
        leases=leases,
        people=people,
        **(cases.context() if cases else {}),
    )
    app = create_app(ctx)
    app.state.deliveries = delivery.store if delivery else None  # GET /deliveries
    return ApiServer(app, settings.api_host, settings.api_port)


def lease_ms(settings: Settings) -> int:
    return round(settings.lease_s * 1000)


def _outbox(settings: Settings, store: AlertStore, seat: Seat | None) -> MqttOutbox:
    """The alert publisher; a cluster's workers each have their own connection, and only the
    leader sends the shared outbox table (ingest/alerts/outbox.py)."""
    if seat is None:
        return MqttOutbox(settings, f"{settings.mqtt_client_id}-alerts", source=store)
    # Its own connection per process: the seat's id of this start, with no "." (NATS refuses
    # client ids with one: they become subject tokens).
    client_id = f"{settings.mqtt_client_id}-alerts-{seat.worker.replace('.', '-')}"
    return MqttOutbox(settings, client_id, source=store, active=seat.leader, idle_s=0.2)


async def serve(
    settings: Settings, registry: Registry, stop: asyncio.Event, state: ServiceState | None = None
) -> ServiceState:
    """Run the ingest service until ``stop`` is set; return its final state."""
    state = state or ServiceState()
    ledger = state.ledger
    rules = load_rules(settings.rules, registry)
    refuse_unsafe(settings, rules)
    vendors = vendor_maps(settings, registry)
    sink = await _open_sink_retrying(settings, stop)
    if sink is None:
        return state
    private_dir(settings.data_dir)
    store = DeadLetterStore(store_location(settings), settings.deadletter_max_rows)
    batcher = Batcher(settings.batch_size, settings.batch_interval_s)
    cluster = settings.broker == "nats"  # a worker: partitions under leases (ingest/cluster/)
    acks = AckRouter(STRIDE) if cluster else AckTracker()
    dead_letters = DeadLetterBuffer(store, ledger.add_dead_lettered, on_safe=acks.safe)
    decoder = Decoder(
        registry,
        max_payload_bytes=settings.max_payload_bytes,
        future_skew_ms=int(settings.future_skew_s * 1000),
        max_age_ms=int(settings.max_age_s * 1000),
        partitions=settings.partitions if settings.broker == "nats" else None,
        vendors=vendors,
    )
    encoder = LineEncoder(registry, PlateHasher(settings.plate_key.get_secret_value().encode()))
    deliverer = Deliverer(sink)
    database = settings.database_url.get_secret_value() if settings.database_url else None
    if database is None:
        private_file(settings.data_dir / ALERTS_FILE)
    alert_store = AlertStore(store_url(database, settings.data_dir))
    seat = Seat.of(settings.worker_name, settings.partitions) if cluster else None
    leases = (
        Leases(store_url(database, settings.data_dir), settings.partitions, lease_ms(settings))
        if cluster
        else None
    )
    outbox = _outbox(settings, alert_store, seat)
    cases = open_cases(
        settings, registry, store_url(database, settings.data_dir), seat, outbox.wake
    )
    alert_store.on_opened = cases.on_opened(rules)
    delivery = open_delivery(  # people's channels (issue 19): the leader's, as the outbox
        settings,
        registry,
        store_url(database, settings.data_dir),
        seat,
        outbox.wake,
        influx_rows=influxql_rows,  # the pushes' observation batches read InfluxDB so
    )
    alerting = Alerting(
        rules,
        registry,
        alert_store,
        outbox,
        batcher,
        start_grace_s=settings.alert_start_grace_s,
        snapshot_interval_s=settings.alert_snapshot_interval_s,
        renotify_s=settings.alert_renotify_s,
        ahead_tolerance_s=settings.ahead_tolerance_s,
        seat=seat,
    )
    state.alerting = alerting
    decoder.stamps = alerting.stamps  # saved with the engine's state (ingest/intake/stamps.py)
    clock_skew = ClockSkew()  # each device's clock against ours: /devices/{id}, /metrics
    speed = SegmentSpeeds(registry)  # road segments' congestion (ingest/intake/congestion.py)
    pipeline = Pipeline(
        decoder, encoder, batcher, dead_letters, ledger, alerting, clock_skew, speed
    )
    consumer: MqttConsumer | PartitionSessions
    worker = None
    if isinstance(acks, AckRouter):
        consumer = PartitionSessions(settings, pipeline.handle, lambda: pipeline.in_flight, acks)
        assert leases is not None and seat is not None
        worker = state.worker = Worker(leases, seat, alerting, consumer)
    else:
        consumer = MqttConsumer(settings, pipeline.handle, acks, held=lambda: pipeline.in_flight)
    state.consumer = consumer
    alerting.follow_reading(lambda: consumer.reading_live, lambda: pipeline.in_flight)
    alerting.follow_clocks(clock_skew)
    spool = await asyncio.to_thread(
        Spool, settings.data_dir / "spool", max_bytes=settings.spool_max_bytes
    )
    state.spool = spool
    metrics = Metrics(
        Sources(
            ledger=ledger,
            in_flight=lambda: pipeline.in_flight,
            pending_batches=lambda: batcher.pending_batches,
            evaluated=lambda: alerting.evaluated,
            eval_seconds=lambda: alerting.eval_seconds,
            alerts_by_state=alert_store.count_by_state,
            connected=lambda: consumer.connected,
            spool_points=lambda: spool.lines,
            deadletters_pruned=store.pruned,
            rule_failures=lambda: dict(alerting.engine.failures),
            rules_state_lost=lambda: alerting.state_problem is not None,
            clock_skewed=lambda: clock_skew.skewed(round(settings.clock_skew_warn_s * 1000)),
        )
    )
    drain = Drain(
        batcher,
        deliverer,
        dead_letters,
        ledger,
        spool=spool,
        spool_after_s=settings.spool_after_s,
        on_safe=acks.safe,
        observe=metrics.observe_batch,
    )
    if not spool.is_empty:
        log.info("spool holds %d points from before: replaying them", spool.lines)
    http = aiohttp.ClientSession()
    try:
        api = _api_server(
            settings,
            registry,
            alerting,
            alert_store,
            store,
            http,
            consumer,
            metrics,
            spool,
            drain,
            clock_skew,
            leases,
            cases,
            delivery,
        )
        state.api_url = api.url if api else None
        if api is not None:
            log.info("HTTP API at %s (OpenAPI at %s/docs)", api.url, api.url)
        # Everything built so far lives as long as the process (modules, the registry, rules,
        # the engine's state, the API's schemas): out of the collector's sight, a full
        # collection no longer walks it. Measured: such collections took 45-76 ms on the
        # event loop while alerts waited (the alert latency tail, benchmarks/README.md).
        gc.collect()  # first, or the garbage of start-up would be frozen with the rest
        gc.freeze()
        async with asyncio.TaskGroup() as tg:
            writer = tg.create_task(drain.run(), name="influx-writer")
            replaying = tg.create_task(drain.replay(), name="spool-replay")
            serving = tg.create_task(api.run(), name="http-api") if api else None
            publishing = tg.create_task(outbox.run(), name="alert-publisher")
            storing = tg.create_task(alerting.run_store(), name="alert-store")
            telling = tg.create_task(alerting.run(), name="alert-tell")
            clock = tg.create_task(alerting.run_clock(), name="alert-clock")
            case_clock = tg.create_task(cases.clock.run(), name="case-clock")
            delivering = tg.create_task(delivery.sender.run(), name="channel-delivery")
            timer = tg.create_task(batcher.run_timer(), name="batch-timer")
            flusher = tg.create_task(dead_letters.run(), name="dead-letter-flush")
            reporter = tg.create_task(
                report_status(ledger, lambda: pipeline.in_flight, settings.status_interval_s),
                name="status-report",
            )
            reading = tg.create_task(consumer.run(), name="mqtt-consumer")
            beating = tg.create_task(worker.run(), name="partition-leases") if worker else None
            following = (
                tg.create_task(alerting.run_follow(), name="alert-feed-follow") if worker else None
            )
            state.started.set()
            await stop.wait()
            log.info("stopping: no more messages are read, no more requests served")
            if api is not None and serving is not None:
                api.stop()
                await asyncio.wait([serving], timeout=API_STOP_TIMEOUT_S)
                serving.cancel()
            consumer.stop_reading()
            # Alert changes of the last messages: stored, told, their points into the last batch.
            clock.cancel()
            case_clock.cancel()
            await alerting.settle(ALERT_SETTLE_S)
            storing.cancel()
            telling.cancel()
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
            replaying.cancel()
            dead_letters.close()
            await asyncio.wait([flusher])
            # Everything taken is durable (or given up on): the last PUBACKs have been queued;
            # DISCONNECT now, and what was not acknowledged waits at the broker.
            consumer.release()
            done, _ = await asyncio.wait([reading], timeout=RELEASE_TIMEOUT_S)
            if not done:
                reading.cancel()
            if worker is not None and beating is not None:
                beating.cancel()  # then hand every lease back: the others take them at once
                await worker.release()
            await delivery.sender.settle(ALERT_SETTLE_S)  # answers in flight recorded
            delivering.cancel()
            await outbox.settle(ALERT_SETTLE_S)
            publishing.cancel()
            reporter.cancel()
            if following is not None:
                following.cancel()
    finally:
        await http.close()
        with contextlib.suppress(Exception):
            await sink.close()
        store.close()
        await asyncio.to_thread(spool.close)
        alerting.save()
        alert_store.close()
        cases.close()
        delivery.close()
        if leases is not None:
            leases.close()
    log.info("stopped: %s", status_line(ledger, pipeline.in_flight))
    return state
