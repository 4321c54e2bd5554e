"""End to end on real processes: paho publishes, citysense serves, InfluxDB is queried."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from devices.registry import Registry
from ingest.service import ServiceState, serve
from ingest.settings import InfluxDialect, Settings
from ingest.sinks.deadletters import DeadLetterStore
from tests.brokerauth import GATEWAY, broker_files
from tests.services import influx_query, new_database, vm_export

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
REGISTRY_FILE = REPO / "config" / "registry.yaml"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def publish(port: int, messages: list[tuple[str, bytes]]) -> None:
    """Publish at QoS 1 with a plain paho client, as the gateway; wait for every PUBACK."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:8]}")
    client.username_pw_set(GATEWAY.username, GATEWAY.password)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        infos = [client.publish(topic, payload, qos=1) for topic, payload in messages]
        for info in infos:
            info.wait_for_publish(timeout=10)
            assert info.is_published()
    finally:
        client.disconnect()
        client.loop_stop()


@asynccontextmanager
async def running_service(settings: Settings, registry: Registry) -> AsyncIterator[ServiceState]:
    stop = asyncio.Event()
    state = ServiceState()
    task = asyncio.create_task(serve(settings, registry, stop, state))
    await asyncio.wait_for(state.started.wait(), 15)
    for _ in range(200):  # until subscribed, so nothing published next is missed
        if state.consumer is not None and state.consumer.connected:
            break
        await asyncio.sleep(0.05)
    try:
        yield state
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def settle(state: ServiceState, expected: int, timeout_s: float = 20) -> None:
    """Wait until ``expected`` messages were received and each is written or dead-lettered."""
    ledger = state.ledger
    deadline = asyncio.get_running_loop().time() + timeout_s
    while asyncio.get_running_loop().time() < deadline:
        if ledger.received >= expected and ledger.written_total + ledger.dead_lettered >= expected:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"not settled after {timeout_s} s: {ledger.summary(-1)}")


def make_settings(tmp_path: Path, mqtt_port: int, **overrides: Any) -> Settings:
    """Settings for one test: its own session, share group and data dir; fast batches."""
    values: dict[str, Any] = {
        "mqtt_port": mqtt_port,
        "mqtt_client_id": f"citysense-test-{uuid.uuid4().hex[:8]}",
        "registry": REGISTRY_FILE,
        "data_dir": tmp_path,
        "batch_interval_s": 0.1,
        "status_interval_s": 1,
        "api_port": 0,  # any free port; the service reports it in state.api_url
    }
    return Settings(**(values | overrides))


def first_of(registry: Registry, kind: str) -> str:
    return next(d.id for d in registry.devices.values() if d.kind == kind)


def known_good(registry: Registry, base_ms: int) -> list[tuple[str, bytes]]:
    """Two messages of every kind and channel, with distinct timestamps."""
    river, gate, road = (first_of(registry, k) for k in ("river", "gate", "road"))
    out: list[tuple[str, dict[str, Any]]] = []
    for i in range(2):
        ts = base_ms + i * 1000
        out += [
            (
                f"iot/river/{river}/telemetry",
                {"ts": ts, "seq": 1 + i, "water_level_m": 208.25 + i, "ph": 7.4, "do_mgl": 6.8},
            ),
            (
                f"iot/gate/{gate}/telemetry",
                {
                    "ts": ts,
                    "seq": 1 + i,
                    "door": "closed",
                    "people_in": 3 + i,
                    "people_out": 1,
                    "vehicles_in": 0,
                    "vehicles_out": 0,
                },
            ),
            (
                f"iot/gate/{gate}/event",
                {"ts": ts + 1, "seq": 10 + i, "event": "pass", "direction": "in", "method": "face"},
            ),
            (
                f"iot/road/{road}/telemetry",
                {"ts": ts, "seq": 1 + i, "vehicle_count": 12 + i, "avg_speed_kmh": 43.5},
            ),
            (
                f"iot/road/{road}/event",
                {
                    "ts": ts + 2,
                    "seq": 20 + i,
                    "event": "speeding",
                    "speed_kmh": 91.0,
                    "plate": "湘E·12345",
                },
            ),
            (f"iot/river/{river}/status", {"online": True, "ts": ts + 3}),
        ]
    return [(t, json.dumps(p, ensure_ascii=False).encode()) for t, p in out]


def known_bad(registry: Registry) -> list[tuple[str, bytes, str]]:
    river, gate = first_of(registry, "river"), first_of(registry, "gate")
    ts = now_ms()
    return [
        (f"iot/river/{river}/telemetry", b"{nope", "invalid_json"),
        (f"iot/river/{river}/telemetry", b'{"ts": %d, "ph": NaN}' % ts, "not_finite"),
        (f"iot/river/{river}/telemetry", b'{"ts": %d, "ph": 15}' % ts, "out_of_range"),
        (f"iot/river/{river}/telemetry", b'{"ts": %d, "ph": "7"}' % ts, "schema"),
        (
            f"iot/river/{river}/telemetry",
            b'{"ts": %d, "ph": 7}' % (ts + 3_600_000),
            "future_timestamp",
        ),
        ("iot/river/no-such-station/telemetry", b'{"ts": %d, "ph": 7}' % ts, "unknown_device"),
        (f"iot/road/{gate}/telemetry", b'{"ts": %d, "vehicle_count": 1}' % ts, "kind_mismatch"),
        (
            f"iot/river/{river}/telemetry",
            b'{"ts": %d, "ph": 7, "x": "%s"}' % (ts, b"x" * 20000),
            "too_large",
        ),
        (f"iot/river/{river}/event", b'{"ts": %d}' % ts, "bad_topic"),
        # Plates in rejected events (issue 13 item 10): none may be kept in clear.
        (
            f"iot/gate/{gate}/event",
            json.dumps(
                {"ts": ts + 3_600_000, "seq": 1, "event": "pass", "plate": "湘E·54321"},
                ensure_ascii=False,
            ).encode(),
            "future_timestamp",
        ),
        (
            f"iot/gate/{gate}/event",
            b'{"ts": %d, "seq": "two", "event": "pass", "pl\\u0061te": "\\u6e58E66778", "x": 1}'
            % ts,
            "schema",
        ),
        (
            f"iot/gate/{gate}/event",
            '{"ts": %d, "event": "pass", "plate": "湘E99887"'.encode() % ts,
            "invalid_json",
        ),
        # Not JSON at all, so nothing can say where the plate ends: withheld whole.
        (f"iot/gate/{gate}/event", "{ts: %d, plate: '湘E11223'}".encode() % ts, "invalid_json"),
        (f"iot/gate/{gate}/event", "plate=湘E44556&ts=%d".encode() % ts, "invalid_json"),
    ]


PLATE_DIGITS = (b"54321", b"66778", b"99887", b"11223", b"44556")


def check_private_and_plate_free(data_dir: Path) -> None:
    """Issue 13 item 10: no plate in clear in the store's files (the WAL included), only its
    hash; the data directory 0700 and every store in it 0600."""
    kept = b"".join(p.read_bytes() for p in data_dir.glob("deadletters.sqlite3*"))
    assert not [d for d in PLATE_DIGITS if d in kept]
    assert kept.count(b"plate_hash:") >= 3
    assert kept.count(b"may_contain_plate") >= 2
    assert data_dir.stat().st_mode & 0o777 == 0o700
    stores = [*data_dir.glob("deadletters.sqlite3*"), *data_dir.glob("alerts.sqlite3*")]
    assert len(stores) >= 2
    assert {p.name: p.stat().st_mode & 0o777 for p in stores} == {p.name: 0o600 for p in stores}


async def test_every_message_stored_once_or_dead_lettered(
    tmp_path: Path, mosquitto: Any, influxdb: Any, registry: Registry
) -> None:
    os.chmod(tmp_path, 0o755)  # as an earlier version or a careless operator left it
    database = new_database(influxdb.url, "e2e")
    settings = make_settings(
        tmp_path,
        mosquitto.port,
        influx_url=influxdb.url,
        influx_database=database,
        influx_dialect=InfluxDialect.V1,
    )
    base = now_ms() - 60_000
    good = known_good(registry, base)
    bad = known_bad(registry)
    after = known_good(registry, base + 30_000)  # proves the consumer survived the bad ones

    async with running_service(settings, registry) as state:
        await asyncio.to_thread(publish, mosquitto.port, good)
        await asyncio.to_thread(publish, mosquitto.port, [(t, p) for t, p, _ in bad])
        await asyncio.to_thread(publish, mosquitto.port, after)
        await settle(state, len(good) + len(bad) + len(after))
        await asyncio.sleep(0.3)  # a redelivered duplicate would show up now
        ledger = state.ledger
        assert ledger.received == len(good) + len(bad) + len(after)
        assert ledger.balances(0), ledger.summary(0)

    # Every valid message stored exactly once, with its tags, fields and time.
    counts = {
        m: influx_query(influxdb.url, database, f"SELECT count(seq) FROM {m}")
        for m in ("river", "gate", "gate_event", "road", "road_event")
    }
    for m, series in counts.items():
        assert series[0]["values"][0][1] == 4, (m, series)
    status = influx_query(influxdb.url, database, "SELECT count(online) FROM device_status")
    assert status[0]["values"][0][1] == 4

    river = first_of(registry, "river")
    path = registry.device_path(river).tags()
    rows = influx_query(
        influxdb.url,
        database,
        f"SELECT * FROM river WHERE device = '{river}' ORDER BY time ASC",
        epoch="ms",
    )[0]
    record = dict(zip(rows["columns"], rows["values"][0], strict=True))
    assert record["time"] == base
    assert record["water_level_m"] == 208.25 and record["ph"] == 7.4 and record["seq"] == 1
    for level in ("grid", "village", "township", "county"):
        assert record[level] == path[level]

    tags = influx_query(influxdb.url, database, "SHOW TAG KEYS FROM road_event")[0]["values"]
    assert sorted(t[0] for t in tags) == [
        "county",
        "device",
        "event",
        "grid",
        "township",
        "village",
    ]
    road_event = influx_query(influxdb.url, database, "SELECT * FROM road_event")[0]
    flat = json.dumps(road_event, ensure_ascii=False)
    assert "12345" not in flat and "plate_hash" in road_event["columns"]

    # Every bad one dead-lettered with its reason, and kept for inspection.
    store = DeadLetterStore(tmp_path / "deadletters.sqlite3")
    letters = store.list(limit=100)
    store.close()
    assert sorted(d.reason for d in letters) == sorted(r for _, _, r in bad)
    too_large = next(d for d in letters if d.reason == "too_large")
    assert too_large.payload_size > 20000 and len(too_large.payload) <= 4096
    check_private_and_plate_free(tmp_path)


async def test_v2_dialect_writes_through_influxdb_client(
    tmp_path: Path, mosquitto: Any, victoria_metrics: Any, registry: Registry
) -> None:
    settings = make_settings(
        tmp_path,
        mosquitto.port,
        influx_url=victoria_metrics.url,
        influx_dialect=InfluxDialect.V2,
        influx_bucket="citysense",
    )
    base = now_ms() - 60_000
    good = known_good(registry, base)
    async with running_service(settings, registry) as state:
        await asyncio.to_thread(publish, mosquitto.port, good)
        await settle(state, len(good))
        assert state.ledger.written_total == len(good)
    river = first_of(registry, "river")
    series = await wait_for_export(
        victoria_metrics.url, f'{{__name__="river_water_level_m",device="{river}"}}'
    )
    assert series["values"] == [208.25, 209.25]
    assert series["timestamps"] == [base, base + 1000]
    assert series["metric"]["grid"] == registry.devices[river].grid


async def wait_for_export(url: str, match: str, timeout_s: float = 10) -> dict[str, Any]:
    # VictoriaMetrics makes new samples searchable after a short delay.
    deadline = time.monotonic() + timeout_s
    while True:
        found = vm_export(url, match)
        if found or time.monotonic() > deadline:
            assert found, f"nothing exported for {match}"
            return found[0]
        await asyncio.sleep(0.5)


async def test_service_shuts_down_in_order_and_loses_nothing(
    tmp_path: Path, mosquitto: Any, influxdb: Any, registry: Registry
) -> None:
    database = new_database(influxdb.url, "stop")
    settings = make_settings(
        tmp_path,
        mosquitto.port,
        influx_url=influxdb.url,
        influx_database=database,
        batch_interval_s=30,
        batch_size=100_000,
    )
    good = known_good(registry, now_ms() - 60_000)
    async with running_service(settings, registry) as state:
        await asyncio.to_thread(publish, mosquitto.port, good)
        for _ in range(100):
            if state.ledger.received == len(good):
                break
            await asyncio.sleep(0.05)
        # The batch is far from full and far from due: only shutdown can flush it.
        assert state.ledger.written_total == 0
    assert state.ledger.written_total == len(good)
    stored = influx_query(influxdb.url, database, "SELECT count(seq) FROM river")
    assert stored[0]["values"][0][1] == 2


async def test_consumer_reconnects_after_a_broker_restart(
    tmp_path: Path, influxdb: Any, registry: Registry
) -> None:
    from ingest.ops.processes import free_port, start_mosquitto

    port = free_port()
    broker_dir = tmp_path / "broker"
    listeners = broker_files(broker_dir / "broker", port, free_port()).listeners
    broker = start_mosquitto(port, broker_dir, REPO / "mosquitto.conf", listeners)
    database = new_database(influxdb.url, "restart")
    settings = make_settings(tmp_path, port, influx_url=influxdb.url, influx_database=database)
    before = known_good(registry, now_ms() - 60_000)
    after = known_good(registry, now_ms() - 30_000)
    try:
        async with running_service(settings, registry) as state:
            assert state.consumer is not None
            await asyncio.to_thread(publish, port, before)
            await settle(state, len(before))
            await asyncio.to_thread(broker.stop)
            broker = await asyncio.to_thread(
                start_mosquitto, port, broker_dir, REPO / "mosquitto.conf", listeners
            )
            # Published at once, before the service is back: the broker restored the plain
            # subscription of the persistent session from its file and queues them for it.
            await asyncio.to_thread(publish, port, after)
            await settle(state, len(before) + len(after))
            assert state.consumer.sessions == 2
    finally:
        broker.stop()
    # Every point once. (A message whose PUBACK the old broker had not processed is
    # delivered again; it lands on the same series and time, so InfluxDB keeps one.)
    for measurement, n in [("gate_event", 4), ("river", 4), ("road_event", 4), ("gate", 4)]:
        stored = influx_query(influxdb.url, database, f"SELECT count(seq) FROM {measurement}")
        assert stored[0]["values"][0][1] == n, measurement


async def eventually(condition: Callable[[], bool], timeout_s: float = 15) -> None:
    """Wait until ``condition()`` holds; fail after ``timeout_s``."""
    for _ in range(int(timeout_s / 0.05)):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"not true within {timeout_s} s")


@asynccontextmanager
async def refusing_influx() -> AsyncIterator[str]:
    """An InfluxDB stand-in that answers /ping and fails every write with 503: nothing a
    service sends to it becomes durable. (A fake, because a real InfluxDB cannot be told to
    fail writes while it answers pings.)"""
    from aiohttp import web

    async def ping(_: web.Request) -> web.Response:
        return web.Response(status=204, headers={"X-Influxdb-Version": "1.6.7"})

    async def write(_: web.Request) -> web.Response:
        return web.Response(status=503, text="overloaded")

    app = web.Application()
    app.router.add_get("/ping", ping)
    app.router.add_post("/write", write)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_what_was_never_durable_is_delivered_again_to_the_next_session(
    tmp_path: Path, mosquitto: Any, influxdb: Any, registry: Registry
) -> None:
    """Manual acknowledgement: a service that could store nothing acknowledged nothing, so
    after it dies the broker hands every message to the next run of the same session."""
    database = new_database(influxdb.url, "redeliver")
    good = known_good(registry, now_ms() - 60_000)
    client_id = f"citysense-test-{uuid.uuid4().hex[:8]}"
    async with refusing_influx() as url:
        settings = make_settings(tmp_path, mosquitto.port, influx_url=url, mqtt_client_id=client_id)
        stop = asyncio.Event()
        state = ServiceState()
        task = asyncio.create_task(serve(settings, registry, stop, state))
        await asyncio.wait_for(state.started.wait(), 15)
        await eventually(lambda: state.consumer is not None and state.consumer.connected)
        await asyncio.to_thread(publish, mosquitto.port, good)
        await eventually(lambda: state.ledger.received >= len(good))
        assert state.consumer is not None
        assert state.consumer.acks.acknowledged == 0
        assert state.consumer.acks.unacknowledged == len(good)
        task.cancel()  # dies without a clean stop, as after a crash
        with contextlib.suppress(asyncio.CancelledError):
            await task
    settings = make_settings(
        tmp_path,
        mosquitto.port,
        influx_url=influxdb.url,
        influx_database=database,
        mqtt_client_id=client_id,
    )
    async with running_service(settings, registry) as again:
        await settle(again, len(good))
        assert again.consumer is not None
        consumer = again.consumer
        await eventually(lambda: consumer.acks.unacknowledged == 0)
        assert again.consumer.acks.acknowledged == len(good)
    stored = influx_query(influxdb.url, database, "SELECT count(seq) FROM gate_event")
    assert stored[0]["values"][0][1] == 2


async def test_a_retained_status_without_ts_is_stored_once_across_reconnects(
    tmp_path: Path, mosquitto: Any, influxdb: Any, registry: Registry
) -> None:
    """Issue 13 item 12: the broker re-sends retained statuses on every SUBSCRIBE; one without
    ts (a will, most often) was stamped on each receipt: a new point per reconnect."""
    database = new_database(influxdb.url, "retained")
    settings = make_settings(
        tmp_path, mosquitto.port, influx_url=influxdb.url, influx_database=database
    )
    river = first_of(registry, "river")
    topic = f"iot/river/{river}/status"
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:8]}")
    client.username_pw_set(GATEWAY.username, GATEWAY.password)
    client.connect("127.0.0.1", mosquitto.port)
    client.loop_start()
    try:
        info = client.publish(topic, b'{"online": false, "reason": "connection lost"}', 1, True)
        info.wait_for_publish(timeout=10)
        for _ in range(3):  # three starts, three SUBSCRIBEs, three retained deliveries
            async with running_service(settings, registry) as state:
                await settle(state, 1)
                await asyncio.sleep(0.3)
    finally:
        clear = client.publish(topic, b"", 1, True)  # leave no retained status behind
        clear.wait_for_publish(timeout=10)
        client.disconnect()
        client.loop_stop()
    rows = influx_query(
        influxdb.url, database, f"SELECT online FROM device_status WHERE device = '{river}'"
    )
    assert len(rows[0]["values"]) == 1, rows
