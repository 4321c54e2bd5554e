"""The local stack: Mosquitto (or a NATS cluster) and InfluxDB 1.x for ``citysense stack``.

The servers are real background processes (``processes``), detached in their own session, so
Ctrl-C in the terminal that started them does not stop them. ``up`` records what it started
in ``DATA_DIR/stack.json``; ``down`` stops only what that file records and what is still the
same program.

Everything here is synchronous and blocking: async callers use ``asyncio.to_thread``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from devices.registry import load_registry
from ingest.ops import nats
from ingest.ops.brokerconfig import BrokerFiles, write_broker_files
from ingest.ops.processes import (
    HOST,
    ManagedProcess,
    PortInUseError,
    StackError,
    influx_command,
    port_in_use,
    quote_ident,
    start_influxd,
    start_mosquitto,
)
from ingest.ops.workers import load_workers
from ingest.settings import Settings

# `stack up` starts servers on loopback only, so settings must point there to reach them.
_LOOPBACK_NAMES = {"127.0.0.1", "localhost"}


# --- the stack recorded in DATA_DIR/stack.json -------------------------------------------------


def state_file(settings: Settings) -> Path:
    """Where ``up`` records what it started."""
    return settings.data_dir / "stack.json"


def _recorded(settings: Settings) -> list[ManagedProcess]:
    path = state_file(settings)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    try:
        return [ManagedProcess.from_record(r) for r in json.loads(text)]
    except (ValueError, TypeError, KeyError) as e:
        raise StackError(
            f"cannot read {path} ({e}): stop the servers it lists by hand, then delete it"
        ) from e


def _record(settings: Settings, procs: list[ManagedProcess]) -> None:
    path = state_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written whole and renamed into place: a crash never leaves half a file that down can't read.
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps([p.to_record() for p in procs], indent=2) + "\n")
    tmp.replace(path)


def _check_loopback(setting: str, host: str) -> None:
    if host not in _LOOPBACK_NAMES:
        raise StackError(
            f"{setting} points at {host}: `stack up` starts servers on {HOST} only; "
            "point it there, or run that server yourself"
        )


def broker_files(settings: Settings, out_dir: Path) -> BrokerFiles:
    """Passwords, ACL, listeners and local TLS for ``settings``' registry and workers."""
    if port_in_use(settings.mqtt_tls_port):
        raise PortInUseError(
            f"cannot start mosquitto: its TLS port {HOST}:{settings.mqtt_tls_port} is already in "
            "use; choose another with CITYSENSE_MQTT_TLS_PORT"
        )
    registry = load_registry(settings.registry)
    return write_broker_files(
        out_dir,
        registry,
        load_workers(settings.workers, registry),
        dev_secret=settings.dev_secret.get_secret_value(),
        ingest_user=settings.mqtt_username,
        ingest_password=settings.mqtt_password.get_secret_value(),
        port=settings.mqtt_port,
        tls_port=settings.mqtt_tls_port,
        tls_host=settings.mqtt_tls_bind,
    )


def _nats_up(settings: Settings, recorded: dict[str, ManagedProcess]) -> list[ManagedProcess]:
    """The NATS nodes: those recorded if every one still runs on the planned MQTT ports; else
    the cluster's nodes that run are stopped and all are started with a fresh config."""
    nats.check_nodes(settings.broker_nodes)
    directory = settings.data_dir.resolve() / "nats"
    plan = nats.plan_ports(directory, settings.broker_nodes, settings.mqtt_port)
    names = [f"nats-{i + 1}" for i in range(len(plan))]
    old = [recorded.get(n) for n in names]
    if all(
        p is not None and p.alive() and p.port == ports.mqtt
        for p, ports in zip(old, plan, strict=True)
    ):
        return [p for p in old if p is not None]
    for p in recorded.values():
        if p.name.startswith("nats-"):
            p.stop()
    registry = load_registry(settings.registry)
    users = nats.users_conf(
        registry,
        load_workers(settings.workers, registry),
        dev_secret=settings.dev_secret.get_secret_value(),
        ingest_user=settings.mqtt_username,
        ingest_password=settings.mqtt_password.get_secret_value(),
        partitions=settings.partitions,
    )
    return nats.start_cluster(directory, plan, settings.partitions, settings.nats_ack_wait_s, users)


def up(settings: Settings, repo_root: Path) -> list[ManagedProcess]:
    """Start the broker and InfluxDB for ``settings``, reusing those already running; record them.

    The broker is Mosquitto, or with ``CITYSENSE_BROKER=nats`` a cluster of NATS nodes
    (``ingest.ops.nats``). Data lives in ``DATA_DIR/mosquitto`` (or ``nats``) and
    ``DATA_DIR/influxdb`` and survives ``down``/``up``. If a step fails, what this call started
    is stopped again.
    """
    _check_loopback("CITYSENSE_MQTT_HOST", settings.mqtt_host)
    _check_loopback("CITYSENSE_INFLUX_URL", settings.influx_host)
    data_dir = settings.data_dir.resolve()
    recorded = {p.name: p for p in _recorded(settings)}
    other_broker = "nats-" if settings.broker == "mosquitto" else "mosquitto"
    for p in list(recorded.values()):
        if p.name.startswith(other_broker):  # the broker was switched: one MQTT port, one broker
            p.stop()
            del recorded[p.name]
    brokers: list[ManagedProcess] = []
    if settings.broker == "nats":
        brokers = _nats_up(settings, recorded)
    wanted: list[tuple[str, int, str, Callable[[], ManagedProcess]]] = [
        (
            "influxdb",
            settings.influx_port,
            "CITYSENSE_INFLUX_URL",
            lambda: start_influxd(
                settings.influx_port, data_dir / "influxdb", settings.influx_database
            ),
        ),
    ]
    if settings.broker == "mosquitto":
        mosquitto = (
            "mosquitto",
            settings.mqtt_port,
            "CITYSENSE_MQTT_PORT",
            lambda: start_mosquitto(
                settings.mqtt_port,
                data_dir / "mosquitto",
                repo_root / "mosquitto.conf",
                broker_files(settings, data_dir / "mosquitto" / "broker").listeners,
            ),
        )
        wanted.insert(0, mosquitto)
    procs: list[ManagedProcess] = list(brokers)
    started: list[ManagedProcess] = []
    try:
        for name, port, setting, start in wanted:
            old = recorded.get(name)
            if old is not None and old.alive():
                if old.port == port:
                    procs.append(old)
                    continue
                # Same data directory, new port: two servers must not share one database.
                old.stop()
            try:
                proc = start()
            except PortInUseError as e:
                raise PortInUseError(f"{e}; choose another port with {setting}") from e
            started.append(proc)
            procs.append(proc)
        influxdb = procs[-1]
        if not any(p is influxdb for p in started):
            # A reused server may predate a change of CITYSENSE_INFLUX_DATABASE.
            influx_command(influxdb.url, f"CREATE DATABASE {quote_ident(settings.influx_database)}")
    except BaseException:
        for proc in started:
            proc.stop()
        raise
    _record(settings, procs)  # nats nodes a failed InfluxDB left running: recorded, reused
    return procs


def down(settings: Settings) -> list[str]:
    """Stop what ``up`` recorded for ``settings`` and is still running; return their names."""
    stopped = [p.name for p in _recorded(settings) if p.stop()]
    state_file(settings).unlink(missing_ok=True)
    return stopped


def status(settings: Settings) -> list[tuple[ManagedProcess, bool]]:
    """What ``up`` recorded for ``settings``, each with whether it is still running."""
    return [(p, p.alive()) for p in _recorded(settings)]


def operator_query_hint(settings: Settings) -> str:
    """The InfluxQL an operator would run to see what arrived in the last five minutes."""
    query = (
        "SELECT count(seq) FROM gate, river, road, gate_event, road_event WHERE time > now() - 5m"
    )
    return (
        f"influx -host {settings.influx_host} -port {settings.influx_port} "
        f"-database {settings.influx_database} -precision rfc3339 -execute '{query}'"
    )
