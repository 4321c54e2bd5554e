"""The local stack: Mosquitto (or a NATS cluster and PostgreSQL) and InfluxDB 1.x for
``citysense stack``.

The servers are real background processes (``processes``), detached in their own session, so
Ctrl-C in the terminal that started them does not stop them. ``up`` records what it started
in ``DATA_DIR/stack.json``; ``down`` stops only what that file records and what is still the
same program. With ``CITYSENSE_BROKER=nats`` the stack also runs PostgreSQL, the workers'
shared alert store (``stack_database_url``).

Everything here is synchronous and blocking: async callers use ``asyncio.to_thread``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pwd
import signal
import stat
from collections.abc import Callable, Iterable
from pathlib import Path

from pydantic import SecretStr

from devices.registry import load_registry
from ingest.ops import nats
from ingest.ops.brokerconfig import BrokerFiles, write_broker_files
from ingest.ops.processes import (
    HOST,
    POSTGRES_USER,
    ManagedProcess,
    PortInUseError,
    StackError,
    influx_command,
    port_in_use,
    quote_ident,
    start_influxd,
    start_mosquitto,
    start_postgres,
)
from ingest.people import load_workers
from ingest.settings import Settings

# `stack up` starts servers on loopback only, so settings must point there to reach them.
_LOOPBACK_NAMES = {"127.0.0.1", "localhost"}
POSTGRES = "postgresql"  # the stack's PostgreSQL, as named in stack.json and `stack status`
POSTGRES_DATABASE = "citysense"


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


def _stop(proc: ManagedProcess) -> bool:
    """``proc.stop()``; PostgreSQL gets SIGINT first. False if it was not running."""
    if proc.name != POSTGRES:
        return proc.stop()
    if not proc.alive():
        return False
    # SIGINT is PostgreSQL's fast shutdown: it ends open sessions (a worker's connection pool)
    # and stops. stop()'s SIGTERM alone is its smart shutdown, which waits for them; sent
    # after SIGINT it changes nothing, and SIGKILL still bounds a server that hangs.
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGINT)
    proc.stop()
    return True


def _record_survivors(settings: Settings, procs: Iterable[ManagedProcess]) -> None:
    """After a failed ``up``: record what still runs of ``procs`` (the last of a name wins), so
    ``down`` can stop it and the next ``up`` reuse it; no file if nothing runs."""
    alive = list({p.name: p for p in procs if p.alive()}.values())
    with contextlib.suppress(OSError):  # the failure being raised matters more than this
        if alive:
            _record(settings, alive)
        else:
            state_file(settings).unlink(missing_ok=True)


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


def _blocked_for(user: str, directory: Path) -> Path | None:
    """The first directory from ``/`` down to ``directory`` (existing, absolute) that ``user``
    may not enter (no search permission by its mode bits; ACLs are not read), or None."""
    account = pwd.getpwnam(user)
    groups = set(os.getgrouplist(user, account.pw_gid))
    for d in [*reversed(directory.parents), directory]:
        st = d.stat()
        if st.st_uid == account.pw_uid:
            bit = stat.S_IXUSR
        elif st.st_gid in groups:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return d
    return None


def _check_postgres_reachable(data_dir: Path) -> None:
    """Fail before anything starts if PostgreSQL could not reach ``data_dir/postgresql``.

    PostgreSQL refuses to run as root, so under root ``start_postgres`` runs it as the system
    user ``postgres`` and hands it the instance directory; every directory above must let that
    user through. A data directory under ``/root`` (mode 0700) or pytest's
    ``/tmp/pytest-of-root`` does not: say so rather than leave initdb to fail.
    """
    if os.geteuid() != 0:
        return  # the server runs as we do, and we made the data directory
    try:
        pwd.getpwnam(POSTGRES_USER)
    except KeyError:
        raise StackError(
            f"PostgreSQL runs as the system user {POSTGRES_USER!r} under root, and there is "
            "none: `make deps` installs Debian's postgresql, which makes it"
        ) from None
    data_dir.mkdir(parents=True, exist_ok=True)
    blocked = _blocked_for(POSTGRES_USER, data_dir)
    if blocked is not None:
        mode = stat.S_IMODE(blocked.stat().st_mode)
        raise StackError(
            f"cannot start PostgreSQL in {data_dir / POSTGRES}: as root it runs as user "
            f"{POSTGRES_USER!r}, which may not enter {blocked} (mode {mode:04o}). Choose a "
            f"CITYSENSE_DATA_DIR it can reach (e.g. under /srv or /var/lib), or let it through "
            f"with `chmod o+x {blocked}`"
        )


def stack_database_url(settings: Settings) -> str | None:
    """The SQLAlchemy URL of the stack's PostgreSQL, if ``settings`` are in nats mode and
    ``stack.json`` records a ``postgresql`` that still runs; else None.

    The port is the recorded one (where the server is), which differs from
    ``CITYSENSE_POSTGRES_PORT`` only until the next ``up`` moves it. Raises ``StackError``
    if ``stack.json`` cannot be read.
    """
    if settings.broker != "nats":
        return None
    for proc in _recorded(settings):
        if proc.name == POSTGRES and proc.alive():
            return f"postgresql+psycopg://{POSTGRES_USER}@{proc.address}/{POSTGRES_DATABASE}"
    return None


def with_stack_database(settings: Settings) -> Settings:
    """``settings`` with the stack's PostgreSQL as ``CITYSENSE_DATABASE_URL`` when that is
    unset and ``stack up`` in nats mode runs one: every worker and every CLI command on this
    host then shares the cluster's one database."""
    if settings.database_url is not None:
        return settings
    url = stack_database_url(settings)
    if url is None:
        return settings
    return settings.model_copy(update={"database_url": SecretStr(url)})


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
    (``ingest.ops.nats``) and then also PostgreSQL on ``CITYSENSE_POSTGRES_PORT``, the
    workers' shared database (``stack_database_url``). Data lives in ``DATA_DIR/mosquitto``
    (or ``nats`` and ``postgresql``) and ``DATA_DIR/influxdb`` and survives ``down``/``up``.
    If a step fails, what this call started is stopped again; what still runs stays recorded.
    """
    _check_loopback("CITYSENSE_MQTT_HOST", settings.mqtt_host)
    _check_loopback("CITYSENSE_INFLUX_URL", settings.influx_host)
    data_dir = settings.data_dir.resolve()
    if settings.broker == "nats":
        _check_postgres_reachable(data_dir)
    recorded = {p.name: p for p in _recorded(settings)}

    def switched(name: str) -> bool:
        if settings.broker == "nats":
            return name == "mosquitto"
        # Back to mosquitto: the NATS nodes go (one MQTT port, one broker), and so does the
        # PostgreSQL of the nats stack: only nats-mode workers share it (stack_database_url is
        # None now), and left running it would drop out of stack.json, where `down` could no
        # longer find it. Its data stays in DATA_DIR/postgresql for the next nats `up`.
        return name.startswith("nats-") or name == POSTGRES

    for p in list(recorded.values()):
        if switched(p.name):
            _stop(p)
            del recorded[p.name]
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
    if settings.broker == "nats":
        postgres = (
            POSTGRES,
            settings.postgres_port,
            "CITYSENSE_POSTGRES_PORT",
            lambda: dataclasses.replace(
                start_postgres(settings.postgres_port, data_dir / POSTGRES, POSTGRES_DATABASE),
                name=POSTGRES,
            ),
        )
        wanted.append(postgres)
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
    procs: list[ManagedProcess] = []
    started: list[ManagedProcess] = []
    try:
        if settings.broker == "nats":
            procs += _nats_up(settings, recorded)
        for name, port, setting, start in wanted:
            old = recorded.get(name)
            if old is not None and old.alive():
                if old.port == port:
                    procs.append(old)
                    continue
                # Same data directory, new port: two servers must not share one database.
                _stop(old)
            try:
                proc = start()
            except PortInUseError as e:
                raise PortInUseError(f"{e}; choose another port with {setting}") from e
            started.append(proc)
            procs.append(proc)
        influxdb = next(p for p in procs if p.name == "influxdb")
        if not any(p is influxdb for p in started):
            # A reused server may predate a change of CITYSENSE_INFLUX_DATABASE.
            influx_command(influxdb.url, f"CREATE DATABASE {quote_ident(settings.influx_database)}")
    except BaseException:
        for proc in started:
            _stop(proc)
        # NATS nodes started here, servers reused or not reached yet: recorded, reused.
        _record_survivors(settings, [*recorded.values(), *procs])
        raise
    _record(settings, procs)
    return procs


def down(settings: Settings) -> list[str]:
    """Stop what ``up`` recorded for ``settings`` and is still running; return their names."""
    stopped = [p.name for p in _recorded(settings) if _stop(p)]
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
