"""Alerts end to end: a device message raises an alert that a grid worker's plain paho client
receives on alerts/grid/{grid}, stored once, written to InfluxDB."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from devices.kinds import Level
from devices.registry import Registry, RiverDevice
from ingest.alerts.store import AlertStore, sqlite_url
from ingest.service import ServiceState
from rules.alerts import AlertAction, AlertState, area_ids
from tests.brokerauth import MONITOR
from tests.integration.test_ingest_e2e import (
    first_of,
    make_settings,
    now_ms,
    publish,
    running_service,
    settle,
)
from tests.services import influx_query, new_database

pytestmark = pytest.mark.integration


async def applied(state: ServiceState, changes: int, timeout_s: float = 10) -> None:
    """Wait until the service has applied ``changes`` alert changes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if state.alerting is not None and state.alerting.changes >= changes:
            return
        await asyncio.sleep(0.05)
    got = state.alerting.changes if state.alerting else None
    raise AssertionError(f"{got} alert changes applied, expected {changes}")


class Worker:
    """A grid worker's phone: a persistent session subscribed to its grid's alerts."""

    def __init__(self, port: int, topic: str, client_id: str | None = None) -> None:
        self.received: list[dict[str, Any]] = []
        self.arrived = threading.Event()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id or f"worker-{uuid.uuid4().hex[:6]}",
            clean_session=False,
        )
        self.client.username_pw_set(MONITOR.username, MONITOR.password)  # reads alerts/#
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(topic, qos=1)
        self.client.loop_start()

    def actions(self) -> list[str]:
        return [m["event"]["action"] for m in self.received]

    def wait_for(self, count: int, timeout_s: float = 10) -> None:
        """Block until ``count`` messages arrived (or the timeout)."""
        deadline = time.monotonic() + timeout_s
        while len(self.received) < count and time.monotonic() < deadline:
            time.sleep(0.02)

    def _on_message(self, _c: object, _u: object, message: mqtt.MQTTMessage) -> None:
        self.received.append(json.loads(message.payload))
        self.arrived.set()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


async def test_forced_gate_reaches_its_grid_worker_once(
    tmp_path: Path, mosquitto: Any, influxdb: Any, registry: Registry
) -> None:
    database = new_database(influxdb.url, "alerts")
    settings = make_settings(
        tmp_path, mosquitto.port, influx_url=influxdb.url, influx_database=database
    )
    gate = first_of(registry, "gate")
    grid = registry.devices[gate].grid
    worker = Worker(mosquitto.port, f"alerts/grid/{grid}")
    other = next(d for d in registry.devices.values() if d.grid != grid)
    stranger = Worker(mosquitto.port, f"alerts/grid/{other.grid}")
    ts = now_ms() - 30_000
    events = [
        (
            f"iot/gate/{gate}/event",
            json.dumps({"ts": ts + i * 1000, "seq": 100 + i, "event": "forced_open"}).encode(),
        )
        for i in range(3)  # repeats update the one alert, they do not flood
    ]
    try:
        async with running_service(settings, registry) as state:
            started = time.monotonic()
            await asyncio.to_thread(publish, mosquitto.port, events)
            assert await asyncio.to_thread(worker.arrived.wait, 10)
            latency = time.monotonic() - started
            await settle(state, len(events))
            await applied(state, 3)
            await asyncio.sleep(0.5)  # anything else on its way would arrive by now
    finally:
        worker.close()
        stranger.close()

    assert latency < 2.0
    # Repeats update the alert; the phone hears of it once (renotify after 10 minutes).
    assert worker.actions() == ["opened"]
    ids = {m["alert"]["id"] for m in worker.received}
    assert len(ids) == 1
    first = worker.received[0]
    assert first["alert"]["rule_id"] == "gate_forced_open"
    assert first["alert"]["device_id"] == gate
    assert "门禁被强行打开" in first["message_zh"] and "Gate forced open" in first["message_en"]
    assert registry.devices[gate].name in first["message_zh"]
    assert stranger.received == []  # another grid hears nothing of it

    store = AlertStore(sqlite_url(tmp_path))
    alert = store.get(ids.pop())
    store.close()
    assert alert is not None and alert.repeat_count == 2 and alert.state == "open"
    points = influx_query(
        influxdb.url, database, "SELECT count(alert_id) FROM alert WHERE rule = 'gate_forced_open'"
    )
    assert points[0]["values"][0][1] == 3


def river_readings(
    river: str, levels: list[float], start_ms: int, step_ms: int, seq0: int = 1
) -> list[tuple[str, bytes]]:
    return [
        (
            f"iot/river/{river}/telemetry",
            json.dumps(
                {"ts": start_ms + i * step_ms, "seq": seq0 + i, "water_level_m": level}
            ).encode(),
        )
        for i, level in enumerate(levels)
    ]


async def test_a_flood_of_repeats_keeps_one_open_alert(
    tmp_path: Path, mosquitto: Any, influxdb: Any, registry: Registry
) -> None:
    gate = registry.devices[first_of(registry, "gate")]
    settings = make_settings(
        tmp_path,
        mosquitto.port,
        influx_url=influxdb.url,
        influx_database=new_database(influxdb.url, "alerts"),
    )
    worker = Worker(mosquitto.port, f"alerts/grid/{gate.grid}")
    n = 500
    start = now_ms() - 600_000
    events = [
        (
            f"iot/gate/{gate.id}/event",
            json.dumps({"ts": start + i * 1000, "seq": i, "event": "forced_open"}).encode(),
        )
        for i in range(n)
    ]
    try:
        async with running_service(settings, registry) as state:
            await asyncio.to_thread(publish, mosquitto.port, events)
            await settle(state, n)
            await applied(state, n, timeout_s=30)
            await asyncio.to_thread(worker.wait_for, 1)
            await asyncio.sleep(0.5)
    finally:
        worker.close()

    store = AlertStore(sqlite_url(tmp_path))
    try:
        mine = store.list(device_id=gate.id)
        history = store.history(mine[0].id) if mine else []
    finally:
        store.close()
    assert [(a.rule_id, a.state) for a in mine] == [("gate_forced_open", AlertState.OPEN)]
    repeats = sum(1 for e in history if e.action is AlertAction.REPEATED)
    assert mine[0].repeat_count == repeats == n - 1
    assert worker.actions() == ["opened"]  # one word to the phone, not 500


async def test_an_offline_worker_gets_its_alerts_on_reconnect(
    tmp_path: Path, mosquitto: Any, influxdb: Any, registry: Registry
) -> None:
    gate = registry.devices[first_of(registry, "gate")]
    settings = make_settings(
        tmp_path,
        mosquitto.port,
        influx_url=influxdb.url,
        influx_database=new_database(influxdb.url, "alerts"),
    )
    phone = f"worker-{uuid.uuid4().hex[:6]}"
    Worker(mosquitto.port, f"alerts/grid/{gate.grid}", phone).close()  # subscribed, then away
    event = json.dumps({"ts": now_ms() - 1000, "seq": 1, "event": "forced_open"}).encode()
    async with running_service(settings, registry) as state:
        await asyncio.to_thread(publish, mosquitto.port, [(f"iot/gate/{gate.id}/event", event)])
        await applied(state, 1)
        await asyncio.sleep(0.5)  # the outbox has had its PUBACK
    back = Worker(mosquitto.port, f"alerts/grid/{gate.grid}", phone)
    try:
        back.wait_for(1)
    finally:
        back.close()
    assert back.actions() == ["opened"]
    assert back.received[0]["alert"]["device_id"] == gate.id


async def test_unacknowledged_alerts_escalate_level_by_level_until_acknowledged(
    tmp_path: Path, mosquitto: Any, influxdb: Any, registry: Registry
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "rules:\n"
        "- {id: gate_forced_open, type: event, name: Gate forced open, name_zh: 门禁被强行打开,\n"
        "   severity: major, kinds: [gate], events: [forced_open], escalate_after: 2s}\n"
    )
    gate = registry.devices[first_of(registry, "gate")]
    areas = area_ids(registry.device_path(gate.id))
    settings = make_settings(
        tmp_path,
        mosquitto.port,
        influx_url=influxdb.url,
        influx_database=new_database(influxdb.url, "alerts"),
        rules=rules,
    )
    village = Worker(mosquitto.port, f"alerts/village/{areas[Level.VILLAGE]}")
    township = Worker(mosquitto.port, f"alerts/township/{areas[Level.TOWNSHIP]}")
    county = Worker(mosquitto.port, f"alerts/county/{areas[Level.COUNTY]}")
    event = json.dumps({"ts": now_ms() - 1000, "seq": 1, "event": "forced_open"}).encode()
    try:
        async with running_service(settings, registry):
            started = time.monotonic()
            await asyncio.to_thread(publish, mosquitto.port, [(f"iot/gate/{gate.id}/event", event)])
            await asyncio.to_thread(village.wait_for, 1)
            to_village = time.monotonic() - started
            await asyncio.to_thread(township.wait_for, 1)
            to_township = time.monotonic() - started
            alert_id = township.received[0]["alert"]["id"]
            store = AlertStore(sqlite_url(tmp_path))
            try:
                store.acknowledge(alert_id, "li.ming", now_ms())
            finally:
                store.close()
            await asyncio.sleep(4.5)  # two more escalation periods: none may happen now
    finally:
        for w in (village, township, county):
            w.close()

    # escalate_after 2 s, checked each second: each level within [2 s, 2 s + tick + slack].
    assert 2.0 <= to_village < 4.5, to_village
    assert to_village + 1.5 <= to_township < to_village + 4.5, (to_village, to_township)
    assert village.actions() == ["escalated", "escalated"]  # it heard the township step too
    assert township.actions() == ["escalated"]
    assert county.actions() == []  # acknowledged before it got that far
    store = AlertStore(sqlite_url(tmp_path))
    try:
        alert = store.get(alert_id)
        steps = [e.action for e in store.history(alert_id)]
    finally:
        store.close()
    assert alert is not None and alert.escalation_level is Level.TOWNSHIP
    assert steps == [
        AlertAction.OPENED,
        AlertAction.ESCALATED,
        AlertAction.ESCALATED,
        AlertAction.ACKNOWLEDGED,
    ]


async def test_a_restart_in_the_middle_of_a_for_window_neither_loses_nor_duplicates(
    tmp_path: Path, mosquitto: Any, influxdb: Any, registry: Registry
) -> None:
    river = registry.devices[first_of(registry, "river")]
    assert isinstance(river, RiverDevice)
    level = river.warning_level_m + 0.2
    settings = make_settings(
        tmp_path,
        mosquitto.port,
        influx_url=influxdb.url,
        influx_database=new_database(influxdb.url, "alerts"),
    )
    worker = Worker(mosquitto.port, f"alerts/grid/{river.grid}")
    start = now_ms() - 300_000
    # `for: 2m`: 0–60 s before the restart, 65–150 s after. The second half alone is shorter
    # than 2 minutes, so the alert can only open if the first half survived the restart.
    before = river_readings(river.id, [level] * 13, start, 5000)
    after = river_readings(river.id, [level] * 18, start + 65_000, 5000, seq0=14)
    try:
        async with running_service(settings, registry) as state:
            await asyncio.to_thread(publish, mosquitto.port, before)
            await settle(state, len(before))
            assert state.alerting is not None and state.alerting.changes == 0
        async with running_service(settings, registry) as state:
            await asyncio.to_thread(publish, mosquitto.port, after)
            await settle(state, len(after))
            await applied(state, 1)
            worker.wait_for(1)
            await asyncio.sleep(0.5)
    finally:
        worker.close()

    store = AlertStore(sqlite_url(tmp_path))
    try:
        mine = store.list(device_id=river.id)
    finally:
        store.close()
    assert [(a.rule_id, a.opened_ms) for a in mine] == [("river_over_warning", start + 120_000)]
    assert worker.actions() == ["opened"]
