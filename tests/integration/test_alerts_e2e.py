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

from devices.registry import Registry
from rules.store import AlertStore, sqlite_url
from tests.integration.test_ingest_e2e import (
    first_of,
    make_settings,
    now_ms,
    publish,
    running_service,
    settle,
)
from tests.services import influx_query

pytestmark = pytest.mark.integration


class Worker:
    """A grid worker's phone: a persistent session subscribed to its grid's alerts."""

    def __init__(self, port: int, topic: str) -> None:
        self.received: list[dict[str, Any]] = []
        self.arrived = threading.Event()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"worker-{uuid.uuid4().hex[:6]}",
            clean_session=False,
        )
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(topic, qos=1)
        self.client.loop_start()

    def _on_message(self, _c: object, _u: object, message: mqtt.MQTTMessage) -> None:
        self.received.append(json.loads(message.payload))
        self.arrived.set()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


async def test_forced_gate_reaches_its_grid_worker_once(
    tmp_path: Path, mosquitto: Any, influxdb: Any, registry: Registry
) -> None:
    database = f"alerts_{uuid.uuid4().hex[:8]}"
    influx_query(influxdb.url, "", f"CREATE DATABASE {database}")
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
            for _ in range(100):
                if len(worker.received) >= 3:
                    break
                await asyncio.sleep(0.05)
    finally:
        worker.close()
        stranger.close()

    assert latency < 2.0
    actions = [m["event"]["action"] for m in worker.received]
    assert actions == ["opened", "repeated", "repeated"]
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
