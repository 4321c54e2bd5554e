"""`make bench-scale`: one backlog drained through Mosquitto and through a NATS cluster.

The same K messages (``workload.Workload``) are queued for the service's persistent session
on each broker, then ``citysense serve`` is started and InfluxDB polled until all K points are
there. Reported per broker: messages/s (process start → K counted), the service's CPU per
message and the broker's (utime + stime from ``/proc``, over the drain), and lost (K − stored,
must be 0). The NATS cluster is three nodes on loopback configured as ``citysense stack up``
does (``ingest.ops.nats``); the service reads on node 1, messages are queued through node 3.

Not yet measured: two partitioned workers against one (issue 16's scaling target) — that
needs partition leases, which are not built yet. Prints a table, writes
``bench-scale-results.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.rig import GATEWAY, INGEST, BenchError, Service, Stack, queue_messages, stored_count
from benchmarks.workload import Workload
from devices.registry import load_registry
from ingest.ops import nats
from ingest.ops.brokerconfig import Account
from ingest.ops.processes import free_port
from tests.serviceproc import REGISTRY_FILE

PARTITIONS = 16
_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` so far (s)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


@dataclass
class Drain:
    broker: str
    k: int
    seconds: float  # process start → K counted
    msg_per_s: float  # K / (MQTT connected → K counted): start-up not counted
    service_us_per_msg: float
    broker_us_per_msg: float
    lost: int


class NatsStack:
    """What ``rig.Service`` needs of a stack, with a NATS cluster as its broker."""

    def __init__(self, root: Path, influx: Stack) -> None:
        self._influx = influx
        self.influx_url = influx.influx_url
        self.plan = nats.plan_ports(root, 3, free_port())
        users = nats.users_conf(
            load_registry(REGISTRY_FILE),
            [],
            dev_secret="bench",
            ingest_user=INGEST.username,
            ingest_password=INGEST.password,
            partitions=PARTITIONS,
            accounts=[Account(GATEWAY.username, GATEWAY.password, "gateway")],
        )
        self.nodes = nats.start_cluster(root, self.plan, PARTITIONS, 60, users)
        self.mqtt_port = self.plan[0].mqtt
        self.publish_port = self.plan[2].mqtt

    def create_database(self, name: str) -> None:
        self._influx.create_database(name)

    def drop_database(self, name: str) -> None:
        self._influx.drop_database(name)

    def close(self) -> None:
        for node in self.nodes:
            node.stop()


def connected(service: Service) -> bool:
    """Whether this start of the service has logged its CONNACK."""
    with service.log_path.open("rb") as f:
        f.seek(service._log_offset)
        return b"MQTT connected" in f.read()


def drain(
    stack: Any, root: Path, broker: str, k: int, broker_pids: list[int], publish_port: int
) -> Drain:
    """Queue ``k`` messages for a fresh session, start the service, time the drain."""
    messages = Workload(0.001).backlog(k, time.time_ns() // 1_000_000 - 60_000)
    env = {"CITYSENSE_BROKER": broker, "CITYSENSE_PARTITIONS": str(PARTITIONS)}
    service = Service(stack, root, f"scale-{broker}", **env)
    try:
        service.start()
        service.wait_subscribed()
        service.stop()
        queue_messages(publish_port, messages)
        broker_before = sum(cpu_seconds(p) for p in broker_pids)
        service.start()
        assert service.popen is not None
        pid = service.popen.pid
        deadline = time.monotonic() + 600
        stored = 0
        service_cpu = 0.0
        cpu_at_connect: float | None = None  # start-up (imports, stores) is not per message
        while time.monotonic() < deadline:
            service_cpu = cpu_seconds(pid)
            if cpu_at_connect is None and connected(service):
                cpu_at_connect = service_cpu
            stored = stored_count(stack.influx_url, service.database) or 0
            if stored >= k:
                break
            service.check_alive()
            time.sleep(0.1)
        seconds = time.monotonic() - service.started_at
        broker_cpu = sum(cpu_seconds(p) for p in broker_pids) - broker_before
        draining = seconds - service.connected_after()
        return Drain(
            broker,
            k,
            round(seconds, 2),
            round(k / draining),
            round((service_cpu - (cpu_at_connect or 0.0)) / k * 1e6, 1),
            round(broker_cpu / k * 1e6, 1),
            k - stored,
        )
    finally:
        service.stop()
        service.forget_session()
        stack.drop_database(service.database)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--k", type=int, default=100_000, help="messages in the backlog")
    parser.add_argument("--out", type=Path, default=Path("bench-scale-results.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="citysense-scale-") as tmp:
        root = Path(tmp)
        stack = Stack(root)
        cluster: NatsStack | None = None
        try:
            stack.start()
            assert stack.mosquitto is not None
            cluster = NatsStack(root / "nats", stack)
            runs = [
                drain(stack, root, "mosquitto", args.k, [stack.mosquitto.pid], stack.mqtt_port),
                drain(
                    cluster,
                    root,
                    "nats",
                    args.k,
                    [n.pid for n in cluster.nodes],
                    cluster.publish_port,
                ),
            ]
        finally:
            if cluster is not None:
                cluster.close()
            stack.close()
    print(
        f"{'broker':10} {'K':>8} {'s':>7} {'msg/s':>8} {'svc µs/msg':>11} "
        f"{'broker µs/msg':>14} {'lost':>5}"
    )
    for r in runs:
        print(
            f"{r.broker:10} {r.k:8} {r.seconds:7} {r.msg_per_s:8} {r.service_us_per_msg:11} "
            f"{r.broker_us_per_msg:14} {r.lost:5}"
        )
    args.out.write_text(json.dumps([asdict(r) for r in runs], indent=2) + "\n")
    if any(r.lost for r in runs):
        raise BenchError("messages were lost")


if __name__ == "__main__":
    main()
