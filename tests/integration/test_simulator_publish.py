"""The simulator against a real Mosquitto: what arrives is what the report says was sent."""

from __future__ import annotations

import asyncio
import json
import threading
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import paho.mqtt.publish as paho_publish
import pytest

from devices.kinds import Channel, Kind
from devices.registry import Registry
from devices.topics import parse_device_topic
from ingest.ops.processes import free_port, start_mosquitto
from simulator import (
    MqttTarget,
    SimulationConfig,
    SimulationError,
    run_simulation,
    synthetic_registry,
)
from tests.brokerauth import DEV_SECRET, GATEWAY, INGEST, broker_files

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
RUN_TIMEOUT_S = 30.0
DEVICES_MAX = 10  # tests use at most this many synthetic devices


@dataclass
class Broker:
    """Where a test's broker listens."""

    host: str
    port: int

    def target(self) -> MqttTarget:
        return MqttTarget(host=self.host, port=self.port, dev_secret=DEV_SECRET)


def city(devices: int, seed: int) -> Registry:
    """Synthetic devices; ids come from the same small pool so teardown can tidy them."""
    assert devices <= DEVICES_MAX
    return synthetic_registry(devices, seed=seed)


@pytest.fixture
def broker(mosquitto: Any) -> Iterator[Broker]:
    """The session's Mosquitto (tests/conftest.py), run with the repository's mosquitto.conf.

    Afterwards the retained statuses our devices left are cleared (an empty retained message
    deletes one), so later subscribers on the shared broker, such as an ingest service under
    test, are not handed statuses of devices their registry does not know.
    """
    broker = Broker("127.0.0.1", mosquitto.port)
    yield broker
    topics = [f"iot/{d.kind.value}/{d.id}/status" for d in city(DEVICES_MAX, 0).devices.values()]
    paho_publish.multiple(
        [{"topic": t, "payload": b"", "qos": 1, "retain": True} for t in topics],
        hostname=broker.host,
        port=broker.port,
        auth={"username": GATEWAY.username, "password": GATEWAY.password},
    )


@dataclass
class Received:
    topic: str
    payload: dict[str, Any]
    retained: bool


@dataclass
class Listener:
    """A plain paho-mqtt subscriber collecting what the broker delivers."""

    broker: Broker
    topic_filter: str = "iot/#"
    messages: list[Received] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Condition()
        self._subscribed = threading.Event()
        self._client = paho.Client(paho.CallbackAPIVersion.VERSION2, clean_session=True)
        self._client.username_pw_set(INGEST.username, INGEST.password)  # reads iot/#
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = lambda *_: self._subscribed.set()
        self._client.on_message = self._on_message

    def _on_connect(self, client: paho.Client, *_: Any) -> None:
        client.subscribe(self.topic_filter, qos=1)

    def _on_message(self, _client: paho.Client, _userdata: Any, msg: paho.MQTTMessage) -> None:
        with self._lock:
            self.messages.append(Received(msg.topic, json.loads(msg.payload), bool(msg.retain)))
            self._lock.notify_all()

    def __enter__(self) -> Listener:
        self._client.connect(self.broker.host, self.broker.port)
        self._client.loop_start()
        assert self._subscribed.wait(5), "no SUBACK"
        return self

    def __exit__(self, *_: object) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def live(self) -> list[Received]:
        """Messages published while we were subscribed (not replayed retained ones)."""
        with self._lock:
            return [m for m in self.messages if not m.retained]

    def retained(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {m.topic: m.payload for m in self.messages if m.retained}

    def _wait_count(self, count: int, timeout_s: float) -> None:
        with self._lock:
            self._lock.wait_for(
                lambda: sum(not m.retained for m in self.messages) >= count, timeout_s
            )

    async def wait_for(self, count: int, timeout_s: float = 5.0) -> list[Received]:
        """Wait until ``count`` live messages have arrived, then a little longer for extras."""
        await asyncio.to_thread(self._wait_count, count, timeout_s)
        await asyncio.sleep(0.2)  # anything beyond the expected count would show up now
        return self.live()


async def _retained_statuses(broker: Broker, settle_s: float = 0.5) -> dict[str, dict[str, Any]]:
    with Listener(broker, "iot/+/+/status") as late:
        await asyncio.sleep(settle_s)
        return late.retained()


async def test_what_arrives_is_what_the_report_says(broker: Broker) -> None:
    registry = city(10, seed=5)
    config = SimulationConfig(devices=10, rate=50.0, duration=3.0, seed=5)
    with Listener(broker) as listener:
        run = asyncio.create_task(run_simulation(config, registry, broker.target()))
        await asyncio.sleep(1.5)
        during = await _retained_statuses(broker)
        async with asyncio.timeout(RUN_TIMEOUT_S):
            report = await run
        received = await listener.wait_for(report.total)

    assert not report.interrupted and report.failed == report.skipped == 0
    assert report.elapsed_s == pytest.approx(3.0, abs=0.5)
    assert report.achieved_rate == pytest.approx(50.0, rel=0.1)
    assert report.total == len(received)

    arrived: Counter[tuple[Kind, Channel]] = Counter()
    seqs: dict[str, list[int]] = defaultdict(list)
    for message in received:
        topic = parse_device_topic(message.topic)
        arrived[topic.kind, topic.channel] += 1
        seqs[topic.device_id].append(message.payload["seq"])
    assert arrived == Counter(
        {(k, c): report.count(k, c) for k in Kind for c in Channel if report.count(k, c)}
    )
    # Every device's messages arrive complete and in order: seq 1..last with no gap.
    assert set(seqs) == set(registry.devices)
    for device_id, numbers in seqs.items():
        assert numbers == list(range(1, report.last_seq[device_id] + 1))

    # While the run was going, a newcomer learned from retained statuses who was online
    # (a shared broker may also hold other tests' devices: look at ours only).
    ours = {parse_device_topic(t).device_id: s for t, s in during.items()}
    assert set(registry.devices) <= set(ours)
    assert all(ours[d]["online"] is True and "seq" in ours[d] for d in registry.devices)
    # After a clean stop, the retained status says offline, stopped.
    after = await _retained_statuses(broker)
    mine = {t: s for t, s in after.items() if parse_device_topic(t).device_id in registry.devices}
    assert len(mine) == 10
    assert all(s["online"] is False and s["reason"] == "stopped" for s in mine.values())


async def test_offline_scenario_makes_the_broker_send_the_last_will(broker: Broker) -> None:
    registry = city(4, seed=6)
    config = SimulationConfig(rate=20.0, duration=2.5, scenarios=("offline",), scenario_at=1.0)
    target = "iot/gate/syn-gate-0001/status"  # first device in registry order
    with Listener(broker) as listener:
        async with asyncio.timeout(RUN_TIMEOUT_S):
            report = await run_simulation(config, registry, broker.target())
        received = await listener.wait_for(report.total + 1)

    will = [
        m.payload
        for m in received
        if m.topic == target and m.payload.get("reason") == "connection lost"
    ]
    assert will == [{"online": False, "reason": "connection lost"}]
    # The will is the broker's doing: everything else matches the report exactly.
    assert len(received) == report.total + 1
    assert [s.device_id for s in report.scenarios] == ["syn-gate-0001"]
    dropped_seq = report.last_seq["syn-gate-0001"]
    assert dropped_seq < min(n for d, n in report.last_seq.items() if d != "syn-gate-0001")
    retained = await _retained_statuses(broker)
    assert retained[target] == {"online": False, "reason": "connection lost"}
    assert retained["iot/gate/syn-gate-0002/status"]["reason"] == "stopped"


async def test_cancelling_stops_cleanly_and_still_returns_the_report(broker: Broker) -> None:
    registry = city(6, seed=7)
    config = SimulationConfig(rate=30.0, duration=0)  # until cancelled
    with Listener(broker) as listener:
        run = asyncio.create_task(run_simulation(config, registry, broker.target()))
        await asyncio.sleep(1.5)
        run.cancel()
        async with asyncio.timeout(RUN_TIMEOUT_S):
            report = await run
        received = await listener.wait_for(report.total)
    assert report.interrupted and not run.cancelled()
    assert report.count(channel=Channel.TELEMETRY) > 10
    assert report.count(channel=Channel.STATUS) == 12  # online and offline for each device
    assert len(received) == report.total
    retained = await _retained_statuses(broker)
    assert all(
        retained[f"iot/{d.kind.value}/{d.id}/status"]["reason"] == "stopped"
        for d in registry.devices.values()
    )


async def test_silent_device_stays_online_but_says_nothing(broker: Broker) -> None:
    registry = city(3, seed=8)
    config = SimulationConfig(rate=15.0, duration=2.5, scenarios=("silent",), scenario_at=1.0)
    with Listener(broker) as listener:
        run = asyncio.create_task(run_simulation(config, registry, broker.target()))
        await asyncio.sleep(2.0)
        during = await _retained_statuses(broker, settle_s=0.3)
        async with asyncio.timeout(RUN_TIMEOUT_S):
            report = await run
        received = await listener.wait_for(report.total)
    assert during["iot/gate/syn-gate-0001/status"]["online"] is True
    from_target = [m for m in received if "/syn-gate-0001/" in m.topic]
    assert not from_target[-1].topic.endswith("/status")  # hung: no goodbye at the stop
    last_data_seq = max(m.payload["seq"] for m in from_target if not m.topic.endswith("/status"))
    others = [m.payload["seq"] for m in received if "/syn-river-0001/" in m.topic]
    assert last_data_seq < max(others) // 2  # it went quiet well before the end


async def test_unreachable_broker_is_a_clear_error() -> None:
    config = SimulationConfig(rate=5.0, duration=1.0)
    with pytest.raises(SimulationError, match=r"127\.0\.0\.1:\d+"):
        async with asyncio.timeout(RUN_TIMEOUT_S):
            await run_simulation(
                config, synthetic_registry(3), MqttTarget(port=free_port(), dev_secret=DEV_SECRET)
            )


async def test_devices_reconnect_after_a_broker_restart(tmp_path: Path) -> None:
    # A broker of our own: the session's must not be restarted under the other tests.
    port = free_port()
    registry = city(4, seed=9)
    config = SimulationConfig(rate=20.0, duration=4.5)
    files = broker_files(tmp_path / "broker", port, free_port())
    first = start_mosquitto(port, tmp_path, REPO / "mosquitto.conf", files.listeners)
    try:
        target = MqttTarget(port=port, dev_secret=DEV_SECRET)
        run = asyncio.create_task(run_simulation(config, registry, target))
        await asyncio.sleep(1.2)
    finally:
        first.stop()
    # The broker is gone for most of a second, then back on the same port.
    await asyncio.sleep(0.8)
    second = start_mosquitto(port, tmp_path, REPO / "mosquitto.conf", files.listeners)
    try:
        await asyncio.sleep(1.2)
        during = await _retained_statuses(Broker("127.0.0.1", port), settle_s=0.3)
        async with asyncio.timeout(RUN_TIMEOUT_S):
            report = await run
    finally:
        second.stop()
    assert report.reconnects == 4
    assert len(during) == 4 and all(s["online"] is True for s in during.values())
    assert report.count(channel=Channel.STATUS) == 4 + 4 + 4  # online, online again, offline
    assert report.achieved_rate > 0.5 * config.rate
