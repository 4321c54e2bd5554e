"""The clustered broker (issue 16): three real NATS nodes with JetStream and MQTT on loopback,
configured as ``citysense stack up`` configures them (``ingest.ops.nats``), the real service.

- The partition the broker puts each device in is ``devices.partitions.partition_of``, and a
  device may publish only into its own partition's subject.
- Nothing a device's node acknowledged is lost when that node is SIGKILLed right after the last
  PUBACK: the service, on another node, stores every (device, seq) exactly once.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from devices.partitions import partition_of
from devices.registry import Device, load_registry
from ingest.ops import nats
from ingest.ops.brokerconfig import Account
from ingest.ops.processes import ManagedProcess, free_port, start_influxd
from tests import brokerauth
from tests.integration.faults import STEP_MS, Service, now_ms, stored_keys, telemetry_payload

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
REGISTRY = load_registry(REPO / "config" / "registry.yaml")
PARTITIONS = 4
# What a dead worker's session had read and not acknowledged comes again after this (the
# default, 60 s, would make a worker's SIGKILL cost a minute of test time).
ACK_WAIT_S = 20
HOST = "127.0.0.1"


@dataclass
class Cluster:
    root: Path
    plan: list[nats.NodePorts]
    nodes: list[ManagedProcess]

    def mqtt_port(self, node: int) -> int:
        return self.plan[node].mqtt

    def revive(self) -> None:
        """Start again the nodes a test killed: the module's other tests get all three."""
        dead = [i for i, node in enumerate(self.nodes) if not node.alive()]
        if not dead:
            return
        users = (self.root / "users.conf").read_text()
        skip = [i for i in range(len(self.nodes)) if i not in dead]
        started = nats.start_cluster(self.root, self.plan, PARTITIONS, ACK_WAIT_S, users, skip=skip)
        for i, node in zip(dead, started, strict=True):
            self.nodes[i] = node


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("nats")
    plan = nats.plan_ports(root, 3, free_port())
    users = nats.users_conf(
        REGISTRY,
        [],
        dev_secret=brokerauth.DEV_SECRET,
        ingest_user=brokerauth.INGEST.username,
        ingest_password=brokerauth.INGEST.password,
        partitions=PARTITIONS,
        accounts=[
            Account(brokerauth.GATEWAY.username, brokerauth.GATEWAY.password, "gateway"),
            Account(brokerauth.MONITOR.username, brokerauth.MONITOR.password, "monitor"),
        ],
    )
    nodes = nats.start_cluster(root, plan, PARTITIONS, ACK_WAIT_S, users)
    try:
        yield Cluster(root, plan, nodes)
    finally:
        for node in nodes:
            node.stop()


def client(port: int, login: brokerauth.Login, client_id: str, inflight: int = 20) -> mqtt.Client:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)
    c.username_pw_set(login.username, login.password)
    c.max_inflight_messages_set(inflight)
    connected = threading.Event()
    codes: list[Any] = []

    def on_connect(_c: Any, _u: Any, _f: Any, rc: Any, _p: Any = None) -> None:
        codes.append(rc)
        connected.set()

    c.on_connect = on_connect
    c.connect(HOST, port, keepalive=10)
    c.loop_start()
    assert connected.wait(10) and not codes[0].is_failure, f"CONNACK {codes}"
    return c


class Collector:
    """The service's view: a QoS 1 subscription to every partition, as the ingest user."""

    def __init__(self, port: int) -> None:
        self.got: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self.c = client(port, brokerauth.INGEST, f"probe-{uuid.uuid4().hex[:6]}")
        self.c.on_message = self._on_message
        done = threading.Event()
        self.c.on_subscribe = lambda *a: done.set()
        self.c.subscribe("iot/+/+/+/+", qos=1)
        assert done.wait(10)

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.got.append((msg.topic, msg.payload))

    def wait_for(self, n: int, timeout_s: float = 15) -> list[tuple[str, bytes]]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and len(self.got) < n:
            time.sleep(0.05)
        time.sleep(0.3)  # anything more that should not come
        with self._lock:
            return list(self.got)

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def publish_and_wait(c: mqtt.Client, topic: str, payload: bytes) -> None:
    info = c.publish(topic, payload, qos=1)
    info.wait_for_publish(10)
    assert info.is_published()


def test_each_device_is_in_the_partition_partition_of_says(cluster: Cluster) -> None:
    collector = Collector(cluster.mqtt_port(0))
    gateway = client(cluster.mqtt_port(1), brokerauth.GATEWAY, f"gw-{uuid.uuid4().hex[:6]}")
    try:
        devices = list(REGISTRY.devices.values())
        for d in devices:
            publish_and_wait(gateway, f"iot/{d.kind.value}/{d.id}/telemetry", d.id.encode())
        got = collector.wait_for(len(devices))
    finally:
        gateway.disconnect()
        collector.close()
    assert len(got) == len(devices)
    seen = {}
    for topic, payload in got:
        _, p, _kind, device_id, channel = topic.split("/")
        assert payload.decode() == device_id and channel == "telemetry"
        seen[device_id] = int(p)
    assert seen == {d.id: partition_of(d.id, PARTITIONS) for d in devices}
    assert len(set(seen.values())) == PARTITIONS  # the example city fills every partition


def test_a_device_publishes_only_into_its_own_partition(cluster: Cluster) -> None:
    """Permissions are checked on the mapped subject; NATS acknowledges a refused publish
    all the same (MQTT 3.1.1 cannot say no), so only what arrives tells."""
    collector = Collector(cluster.mqtt_port(0))
    [device, other] = [d for d in REGISTRY.devices.values() if d.kind.value == "gate"][:2]
    mine = partition_of(device.id, PARTITIONS)
    wrong = (mine + 1) % PARTITIONS
    login = brokerauth.device_login(device.id)
    c = client(cluster.mqtt_port(2), login, device.id)
    try:
        publish_and_wait(c, f"iot/gate/{device.id}/telemetry", b"own")
        publish_and_wait(c, f"iot/gate/{other.id}/telemetry", b"another device's")
        publish_and_wait(c, f"iot/{wrong}/gate/{device.id}/telemetry", b"another partition")
        publish_and_wait(c, f"iot/{mine}/gate/{device.id}/telemetry", b"own, partitioned")
        got = collector.wait_for(2, timeout_s=5)
    finally:
        c.disconnect()
        collector.close()
    assert sorted(p for _, p in got) == [b"own", b"own, partitioned"]
    assert {t for t, _ in got} == {f"iot/{mine}/gate/{device.id}/telemetry"}


def stored_once(
    influx_url: str, since_ms: int, acked: set[tuple[str, int]], timeout_s: float
) -> dict[tuple[str, int], list[int]]:
    """Wait until every acknowledged (device, seq) is in InfluxDB; assert none is lost and
    each is stored once; return what is stored."""
    deadline = time.monotonic() + timeout_s
    stored: dict[tuple[str, int], list[int]] = {}
    while time.monotonic() < deadline:
        stored = stored_keys(influx_url, "citysense", since_ms)
        if acked <= stored.keys():
            break
        time.sleep(0.5)
    lost = acked - stored.keys()
    assert not lost, f"{len(lost)} acknowledged readings lost, e.g. {sorted(lost)[:5]}"
    assert all(len(times) == 1 for times in stored.values())
    return stored


class _Stack:
    """What ``faults.Service`` needs of a stack: the MQTT port it connects to, InfluxDB."""

    def __init__(self, mqtt_port: int, influx: ManagedProcess) -> None:
        self.mqtt_port = mqtt_port
        self.influx_url = influx.url
        self.database = "citysense"


def test_nothing_acknowledged_is_lost_when_the_devices_node_dies(
    cluster: Cluster, tmp_path: Path
) -> None:
    """60 devices × 40 numbered QoS 1 readings through node 3 (a gateway's one connection);
    node 3 is SIGKILLed inside the callback of the last PUBACK. The service reads on node 1:
    every acknowledged (device, seq) is stored, each once."""
    influx = start_influxd(free_port(), tmp_path / "influxdb", "citysense")
    service = Service(
        _Stack(cluster.mqtt_port(0), influx),  # type: ignore[arg-type]
        tmp_path / "data",
        tmp_path / "service.log",
        CITYSENSE_BROKER="nats",
        CITYSENSE_PARTITIONS=str(PARTITIONS),
    )
    devices: list[Device] = list(REGISTRY.devices.values())
    per_device = 40
    total = len(devices) * per_device
    base = now_ms() - (per_device + 10) * STEP_MS
    killed = threading.Event()
    node3 = cluster.nodes[2]
    try:
        service.start(sessions=PARTITIONS)  # every partition subscribed before anyone sends
        gateway = client(
            cluster.mqtt_port(2), brokerauth.GATEWAY, f"gw-{uuid.uuid4().hex[:6]}", inflight=100
        )
        pubacks = [0]  # counted by paho's network thread only

        def on_publish(_c: Any, _u: Any, _mid: int, _rc: Any = None, _p: Any = None) -> None:
            # No lock shared with the publishing thread: paho calls this holding its own.
            pubacks[0] += 1
            if pubacks[0] == total:
                os.kill(node3.pid, signal.SIGKILL)  # right after the last PUBACK
                killed.set()

        gateway.on_publish = on_publish
        sent: list[tuple[tuple[str, int], mqtt.MQTTMessageInfo]] = []
        for seq in range(1, per_device + 1):
            for d in devices:
                payload = json.dumps(telemetry_payload(d, seq, base + seq * STEP_MS, False))
                info = gateway.publish(f"iot/{d.kind.value}/{d.id}/telemetry", payload, qos=1)
                sent.append(((d.id, seq), info))
        assert killed.wait(60), f"only {pubacks[0]} of {total} acknowledged"
        acked = {key for key, info in sent if info.is_published()}
        assert len(acked) == total
        gateway.loop_stop()
        assert len(stored_once(influx.url, base, acked, timeout_s=60)) == total
    finally:
        service.close()
        influx.stop()
        cluster.revive()


def test_the_service_moves_to_another_node_when_its_own_dies(
    cluster: Cluster, tmp_path: Path
) -> None:
    """The service reads on node 1, told of node 2 (CITYSENSE_MQTT_ALSO); devices publish
    through node 3. Node 1 is SIGKILLed halfway: the service resumes its session on node 2
    (the same client id; the session lives in a replicated stream) and every acknowledged
    reading is stored, each once."""
    influx = start_influxd(free_port(), tmp_path / "influxdb", "citysense")
    service = Service(
        _Stack(cluster.mqtt_port(0), influx),  # type: ignore[arg-type]
        tmp_path / "data",
        tmp_path / "service.log",
        CITYSENSE_BROKER="nats",
        CITYSENSE_PARTITIONS=str(PARTITIONS),
        CITYSENSE_MQTT_ALSO=f"{HOST}:{cluster.mqtt_port(1)}",
    )
    devices: list[Device] = list(REGISTRY.devices.values())
    per_device = 30
    base = now_ms() - (per_device + 10) * STEP_MS
    try:
        service.start(sessions=PARTITIONS)  # every partition subscribed before anyone sends
        gateway = client(
            cluster.mqtt_port(2), brokerauth.GATEWAY, f"gw-{uuid.uuid4().hex[:6]}", inflight=100
        )
        sent: list[tuple[tuple[str, int], mqtt.MQTTMessageInfo]] = []
        for seq in range(1, per_device + 1):
            if seq == per_device // 2:
                os.kill(cluster.nodes[0].pid, signal.SIGKILL)  # the service's node
            for d in devices:
                payload = json.dumps(telemetry_payload(d, seq, base + seq * STEP_MS, False))
                info = gateway.publish(f"iot/{d.kind.value}/{d.id}/telemetry", payload, qos=1)
                sent.append(((d.id, seq), info))
            time.sleep(0.1)
        for _, info in sent:
            info.wait_for_publish(30)
        acked = {key for key, info in sent if info.is_published()}
        assert len(acked) == len(sent)
        gateway.loop_stop()
        stored_once(influx.url, base, acked, timeout_s=90)
        log = (tmp_path / "service.log").read_text()
        for p in range(PARTITIONS):  # each partition's session, one worker holding all
            assert f"subscribed to iot/{p}/+/+/+ on {HOST}:{cluster.mqtt_port(1)}" in log
    finally:
        service.close()
        influx.stop()
        cluster.revive()


async def test_each_worker_reads_only_the_partitions_it_is_assigned(cluster: Cluster) -> None:
    """Two workers' partition sessions (ingest/mqtt/partitions.py) on different nodes: each
    device's messages reach exactly the worker assigned its partition; a partition moved from
    one to the other is read by its new owner from then on (same session, same client id)."""
    import asyncio

    from ingest.mqtt.partitions import PartitionSessions
    from ingest.settings import Settings

    got: dict[str, list[str]] = {"a": [], "b": []}
    workers: dict[str, PartitionSessions] = {}

    def settings(node: int) -> Settings:
        return Settings(
            broker="nats",
            partitions=PARTITIONS,
            mqtt_port=cluster.mqtt_port(node),
            mqtt_client_id=f"w-{uuid.uuid4().hex[:6]}",
        )

    shared = settings(0)
    for name, node in (("a", 0), ("b", 1)):

        def handle(topic: str, _payload: bytes, token: int, name: str = name) -> None:
            got[name].append(topic.split("/")[3])
            workers[name].acks.safe([token])

        workers[name] = PartitionSessions(
            shared.model_copy(update={"mqtt_port": cluster.mqtt_port(node)}), handle, lambda: 0
        )

    async def connected(w: PartitionSessions, ps: set[int]) -> None:
        for _ in range(200):
            if ps <= w.consumers.keys() and all(w.consumers[p].connected for p in ps):
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"sessions {ps} not connected")

    def publish_all() -> None:
        gateway = client(cluster.mqtt_port(2), brokerauth.GATEWAY, f"gw-{uuid.uuid4().hex[:6]}")
        for d in REGISTRY.devices.values():
            publish_and_wait(gateway, f"iot/{d.kind.value}/{d.id}/telemetry", b"{}")
        gateway.disconnect()

    async def received(n: int) -> None:
        for _ in range(200):
            if len(got["a"]) + len(got["b"]) >= n:
                return
            await asyncio.sleep(0.05)

    devices = {d.id: partition_of(d.id, PARTITIONS) for d in REGISTRY.devices.values()}
    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(w.run()) for w in workers.values()]
        workers["a"].assign({0, 1})
        workers["b"].assign({2, 3})
        await connected(workers["a"], {0, 1})
        await connected(workers["b"], {2, 3})
        await asyncio.to_thread(publish_all)
        await received(len(devices))
        assert sorted(got["a"]) == sorted(d for d, p in devices.items() if p in (0, 1))
        assert sorted(got["b"]) == sorted(d for d, p in devices.items() if p in (2, 3))
        got["a"].clear()
        got["b"].clear()
        workers["a"].assign({0})  # partition 1 moves to b
        for _ in range(100):
            if 1 not in workers["a"].consumers:
                break
            await asyncio.sleep(0.05)
        workers["b"].assign({1, 2, 3})
        await connected(workers["b"], {1, 2, 3})
        await asyncio.to_thread(publish_all)
        await received(len(devices))
        assert sorted(got["a"]) == sorted(d for d, p in devices.items() if p == 0)
        assert sorted(got["b"]) == sorted(d for d, p in devices.items() if p != 0)
        for task in tasks:
            task.cancel()
