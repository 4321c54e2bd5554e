"""`make bench-scale`: one backlog drained through Mosquitto and through a NATS cluster.

The same K messages (``workload.Workload``) are queued for the service's persistent session
on each broker, then ``citysense serve`` is started and InfluxDB polled until all K points are
there. Reported per broker: messages/s (process start → K counted), the service's CPU per
message and the broker's (utime + stime from ``/proc``, over the drain), and lost (K − stored,
must be 0). The NATS cluster is three nodes on loopback configured as ``citysense stack up``
does (``ingest.ops.nats``); the service reads on node 1, messages are queued through node 3.

On the NATS cluster the drain runs twice: one worker, then two partitioned workers
(``CITYSENSE_WORKER_NAME`` w1, w2; leases, alerts and rule state in one PostgreSQL), each run
with fresh sessions: issue 16's targets are two workers ≥ 1.3 × one, and CPU per message
(all workers together) within ±15 % of one worker's. Prints a table, writes
``bench-scale-results.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.rig import (
    GATEWAY,
    INGEST,
    BenchError,
    Service,
    Stack,
    forget_session,
    queue_messages,
    stored_count,
)
from benchmarks.workload import Workload
from devices.registry import load_registry
from ingest.mqtt.partitions import session_id
from ingest.ops import nats
from ingest.ops.brokerconfig import Account
from ingest.ops.processes import ManagedProcess, free_port, start_postgres
from ingest.settings import Settings
from tests.postgres import new_database
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
    workers: int
    k: int
    seconds: float  # process start → K counted
    msg_per_s: float  # K / (first MQTT connect → K counted): start-up not counted
    service_us_per_msg: float  # all workers' CPU together, per message
    broker_us_per_msg: float
    influx_us_per_msg: float  # InfluxDB's CPU per message (it shares the cores: the profile)
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
    """Whether this start of the service has logged its (first) CONNACK."""
    with service.log_path.open("rb") as f:
        f.seek(service._log_offset)
        return b"MQTT connected" in f.read()


def subscribed_partitions(service: Service) -> int:
    """How many partitions' sessions this start of a worker has subscribed."""
    with service.log_path.open("rb") as f:
        f.seek(service._log_offset)
        return len(set(re.findall(rb"subscribed to iot/(\d+)/", f.read())))


def workers_of(
    stack: Any, root: Path, label: str, broker: str, n: int, database_url: str | None
) -> list[Service]:
    """``n`` services sharing one InfluxDB database; on NATS, partitioned workers sharing
    one client id prefix (the partitions' sessions) and ``database_url``."""
    env = {"CITYSENSE_BROKER": broker, "CITYSENSE_PARTITIONS": str(PARTITIONS)}
    services: list[Service] = []
    for i in range(n):
        extra = dict(env)
        if broker == "nats":
            extra["CITYSENSE_WORKER_NAME"] = f"w{i + 1}"
            if database_url is not None:
                extra["CITYSENSE_DATABASE_URL"] = database_url
        if services:
            extra["CITYSENSE_MQTT_CLIENT_ID"] = services[0].client_id
            extra["CITYSENSE_INFLUX_DATABASE"] = services[0].database
        services.append(Service(stack, root, f"scale-{label}-{i + 1}", **extra))
    return services


def create_sessions(services: list[Service], broker: str) -> None:
    """The persistent sessions the backlog is queued for: the first service alone, once."""
    first = services[0]
    first.start()
    first.wait_subscribed()
    deadline = time.monotonic() + 60
    while broker == "nats" and subscribed_partitions(first) < PARTITIONS:
        if time.monotonic() > deadline:
            raise BenchError(f"not every partition subscribed:\n{first.tail()}")
        time.sleep(0.1)
    first.stop()


def drain(
    stack: Any,
    root: Path,
    broker: str,
    k: int,
    broker_pids: list[int],
    publish_port: int,
    workers: int = 1,
    database_url: str | None = None,
    influx_pid: int | None = None,
) -> Drain:
    """Queue ``k`` messages for fresh sessions, start the service(s), time the drain."""
    label = f"{broker}-{workers}w"
    messages = Workload(0.001).backlog(k, time.time_ns() // 1_000_000 - 60_000)
    services = workers_of(stack, root, label, broker, workers, database_url)
    first = services[0]
    try:
        create_sessions(services, broker)
        queue_messages(publish_port, messages)
        broker_before = sum(cpu_seconds(p) for p in broker_pids)
        influx_before = cpu_seconds(influx_pid) if influx_pid else 0.0
        for service in services:
            service.start()
        pids = [s.popen.pid for s in services if s.popen is not None]
        deadline = time.monotonic() + 600
        stored = 0
        service_cpu = 0.0
        at_connect: dict[int, float] = {}  # start-up (imports, stores) is not per message
        while time.monotonic() < deadline:
            cpu = {pid: cpu_seconds(pid) for pid in pids}
            for service, pid in zip(services, pids, strict=True):
                if pid not in at_connect and connected(service):
                    at_connect[pid] = cpu[pid]
            service_cpu = sum(cpu[pid] - at_connect.get(pid, cpu[pid]) for pid in pids)
            stored = stored_count(stack.influx_url, first.database) or 0
            if stored >= k:
                break
            for service in services:
                service.check_alive()
            time.sleep(0.1)
        seconds = time.monotonic() - first.started_at
        broker_cpu = sum(cpu_seconds(p) for p in broker_pids) - broker_before
        influx_cpu = cpu_seconds(influx_pid) - influx_before if influx_pid else 0.0
        draining = seconds - min(s.connected_after() for s in services)
        return Drain(
            broker,
            workers,
            k,
            round(seconds, 2),
            round(k / draining),
            round(service_cpu / k * 1e6, 1),
            round(broker_cpu / k * 1e6, 1),
            round(influx_cpu / k * 1e6, 1),
            k - stored,
        )
    finally:
        for service in services:
            service.stop()
        ingest_settings = Settings(mqtt_client_id=first.client_id)  # the services' dev secret
        if broker == "nats":  # the partitions' sessions, not one of the client id itself
            for p in range(PARTITIONS):
                forget_session(stack.mqtt_port, session_id(ingest_settings, p), INGEST)
        else:
            first.forget_session()
        for service in services:
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
        postgres: ManagedProcess | None = None
        # Not under the temporary directory: PostgreSQL runs as its own user (tests/postgres.py).
        pg_dir = Path(tempfile.mkdtemp(prefix="citysense-scale-pg-"))
        try:
            stack.start()
            assert stack.mosquitto is not None and stack.influxdb is not None
            influx_pid = stack.influxdb.pid
            cluster = NatsStack(root / "nats", stack)
            postgres = start_postgres(free_port(), pg_dir)
            url = f"postgresql+psycopg://postgres@{postgres.address}/citysense"
            nodes = [n.pid for n in cluster.nodes]
            runs = [
                drain(
                    stack,
                    root,
                    "mosquitto",
                    args.k,
                    [stack.mosquitto.pid],
                    stack.mqtt_port,
                    influx_pid=influx_pid,
                ),
                *(
                    drain(
                        cluster,
                        root,
                        "nats",
                        args.k,
                        nodes,
                        cluster.publish_port,
                        workers,
                        new_database(url, f"scale{workers}"),
                        influx_pid,
                    )
                    for workers in (1, 2)
                ),
            ]
        finally:
            if cluster is not None:
                cluster.close()
            if postgres is not None:
                os.kill(postgres.pid, signal.SIGINT)  # fast shutdown
                postgres.stop()
            shutil.rmtree(pg_dir, ignore_errors=True)
            stack.close()
    print(
        f"{'broker':10} {'workers':>7} {'K':>8} {'s':>7} {'msg/s':>8} {'svc µs/msg':>11} "
        f"{'broker µs/msg':>14} {'influx µs/msg':>14} {'lost':>5}"
    )
    for r in runs:
        print(
            f"{r.broker:10} {r.workers:7} {r.k:8} {r.seconds:7} {r.msg_per_s:8} "
            f"{r.service_us_per_msg:11} {r.broker_us_per_msg:14} {r.influx_us_per_msg:14} "
            f"{r.lost:5}"
        )
    one, two = runs[1], runs[2]
    print(
        f"2 workers / 1: {two.msg_per_s / one.msg_per_s:.2f} × msg/s (target ≥ 1.3), "
        f"CPU per message {two.service_us_per_msg / one.service_us_per_msg - 1:+.0%} "
        "(target within ±15 %)"
    )
    args.out.write_text(json.dumps([asdict(r) for r in runs], indent=2) + "\n")
    if any(r.lost for r in runs):
        raise BenchError("messages were lost")


if __name__ == "__main__":
    main()
