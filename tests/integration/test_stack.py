"""The local stack: fixtures answer, `stack up` is idempotent, two stacks live side by side."""

from __future__ import annotations

import time
import urllib.request
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from ingest import stack
from ingest.settings import Settings
from ingest.stack import ManagedProcess, free_port, mqtt_answers
from tests.services import influx_query, vm_export

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def test_influxdb_fixture_stores_and_answers(influxdb: ManagedProcess) -> None:
    body = b"probe,device=x value=1.5 1700000000000"
    req = urllib.request.Request(f"{influxdb.url}/write?db=citysense&precision=ms", data=body)
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert resp.status == 204
    series = influx_query(influxdb.url, "citysense", "SELECT value FROM probe", epoch="ms")
    assert series[0]["values"] == [[1700000000000, 1.5]]


def test_victoria_metrics_accepts_v2_writes(victoria_metrics: ManagedProcess) -> None:
    ts = time.time_ns() // 1_000_000 - 60_000
    body = b"probe,device=y value=2.5 %d" % ts
    url = f"{victoria_metrics.url}/api/v2/write?bucket=b&org=o&precision=ms"
    with urllib.request.urlopen(urllib.request.Request(url, data=body), timeout=5) as resp:
        assert resp.status == 204
    deadline = time.monotonic() + 10
    while not (found := vm_export(victoria_metrics.url, '{__name__="probe_value"}')):
        assert time.monotonic() < deadline, "VictoriaMetrics never showed the sample"
        time.sleep(0.2)
    assert found[0]["values"] == [2.5] and found[0]["metric"]["device"] == "y"


def test_broker_queues_qos1_for_an_away_persistent_session(mosquitto: ManagedProcess) -> None:
    client_id = f"away-{uuid.uuid4().hex[:6]}"
    received: list[bytes] = []

    def subscriber() -> mqtt.Client:
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
        c.on_message = lambda _c, _u, m: received.append(m.payload)
        c.connect("127.0.0.1", mosquitto.port)
        return c

    sub = subscriber()
    sub.subscribe("away/test", qos=1)
    sub.loop_start()
    time.sleep(0.3)
    sub.disconnect()
    sub.loop_stop()

    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"pub-{client_id}")
    pub.connect("127.0.0.1", mosquitto.port)
    pub.loop_start()
    pub.publish("away/test", b"while-away", qos=1).wait_for_publish(5)
    pub.disconnect()
    pub.loop_stop()

    sub = subscriber()
    sub.loop_start()
    deadline = time.monotonic() + 5
    while not received and time.monotonic() < deadline:
        time.sleep(0.05)
    sub.disconnect()
    sub.loop_stop()
    assert received == [b"while-away"]


def _settings(tmp_path: Path) -> Settings:
    return Settings(
        mqtt_port=free_port(),
        influx_url=f"http://127.0.0.1:{free_port()}",
        data_dir=tmp_path / "data",
    )


def test_up_is_idempotent_and_down_stops_only_its_own(tmp_path: Path) -> None:
    first, second = _settings(tmp_path / "a"), _settings(tmp_path / "b")
    try:
        procs = stack.up(first, REPO)
        assert [p.name for p in procs] == ["mosquitto", "influxdb"]
        again = stack.up(first, REPO)
        assert [p.pid for p in again] == [p.pid for p in procs]  # reused, not restarted

        others = stack.up(second, REPO)
        assert {p.pid for p in others}.isdisjoint(p.pid for p in procs)
        assert mqtt_answers(second.mqtt_port) and mqtt_answers(first.mqtt_port)

        assert sorted(stack.down(first)) == ["influxdb", "mosquitto"]
        assert not any(p.alive() for p in procs)
        assert all(alive for _, alive in stack.status(second))
        assert mqtt_answers(second.mqtt_port)
        assert stack.down(first) == []  # nothing left to stop
    finally:
        stack.down(first)
        stack.down(second)


def test_retained_message_survives_down_and_up(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    try:
        stack.up(settings, REPO)
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        pub.connect("127.0.0.1", settings.mqtt_port)
        pub.loop_start()
        pub.publish(
            "iot/river/r1/status", b'{"online": true}', qos=1, retain=True
        ).wait_for_publish(5)
        pub.disconnect()
        pub.loop_stop()
        stack.down(settings)  # SIGTERM: Mosquitto saves its database on the way out
        stack.up(settings, REPO)

        got: list[bytes] = []
        sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        sub.on_message = lambda _c, _u, m: got.append(m.payload)
        sub.connect("127.0.0.1", settings.mqtt_port)
        sub.subscribe("iot/river/r1/status", qos=1)
        sub.loop_start()
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            time.sleep(0.05)
        sub.disconnect()
        sub.loop_stop()
        assert got == [b'{"online": true}']
    finally:
        stack.down(settings)


def test_port_taken_by_someone_else_is_refused(tmp_path: Path, mosquitto: ManagedProcess) -> None:
    with pytest.raises(stack.StackError, match="already in use"):
        stack.start_mosquitto(mosquitto.port, tmp_path / "m", REPO / "mosquitto.conf")
