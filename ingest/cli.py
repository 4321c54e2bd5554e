"""The ``citysense`` command: one console script, one subcommand per job.

This is an entry point, so it may import every package: the simulator's options and run
function are wired here, keeping ``simulator`` free of ``ingest``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from devices.kinds import Kind, Level
from devices.registry import Registry, RegistryError, load_registry
from ingest.configfile import ConfigFileError, config_file_path, where_set
from ingest.settings import Settings
from ingest.tokens import Role, TokensFileError, TokenStore, tokens_path

REPO_ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("citysense")


def _settings() -> Settings:
    try:
        return Settings()
    except ConfigFileError as e:
        sys.exit(f"citysense: {e}")
    except ValidationError as e:
        lines = where_set([str(err["loc"][0]) for err in e.errors() if err["loc"]])
        sys.exit("\n".join(["citysense: bad CITYSENSE_* setting:", *lines, str(e)]))


def _checked_settings(command: str) -> Settings:
    """The settings, refused at start if production still has a public secret (issue 13)."""
    from ingest.production import PublicSecretError, check_production

    settings = _settings()
    try:
        check_production(settings)
    except PublicSecretError as e:
        sys.exit(f"citysense {command}: {e}")
    return settings


def _registry(path: Path) -> Registry:
    try:
        return load_registry(path)
    except RegistryError as e:
        sys.exit(f"citysense: {e}")


def _print_json(data: Any) -> None:
    print(json.dumps(data, ensure_ascii=False, indent=2, default=str))


def _print_table(rows: Sequence[Sequence[object]], header: Sequence[str]) -> None:
    cells = [list(map(str, header)), *[[str(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for r in cells:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


async def _until_signalled(main: Callable[[asyncio.Event], Any]) -> Any:
    """Run ``main(stop)``; SIGINT/SIGTERM set ``stop`` so it can shut down in order."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return await main(stop)


# --- stack -----------------------------------------------------------------------------------


def cmd_stack(args: argparse.Namespace) -> int:
    """Start, stop or show the local Mosquitto and InfluxDB."""
    from ingest import stack

    settings = _checked_settings("stack up") if args.action == "up" else _settings()
    rows: list[tuple[str, int, str, str]]
    if args.action == "up":
        try:
            procs = stack.up(settings, REPO_ROOT)
        except stack.StackError as e:
            print(f"citysense stack up: {e}", file=sys.stderr)
            return 1
        rows = [(p.name, p.pid, p.address, str(p.log_path)) for p in procs]
    elif args.action == "down":
        stopped = stack.down(settings)
        if args.json:
            _print_json({"stopped": stopped})
        else:
            print("stopped: " + (", ".join(stopped) or "nothing was running"))
        return 0
    else:
        rows = [
            (p.name, p.pid, p.address, "up" if alive else "down")
            for p, alive in stack.status(settings)
        ]
    if args.json:
        _print_json([dict(zip(("name", "pid", "address", "detail"), r, strict=True)) for r in rows])
    else:
        _print_table(rows, ("service", "pid", "address", "log" if args.action == "up" else "state"))
    return 0


# --- serve -----------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the ingest service until SIGINT/SIGTERM."""
    from ingest.mqtttls import MqttTlsError, mqtt_tls_context
    from ingest.service import StartRefused, serve

    settings = _checked_settings("serve")
    try:
        mqtt_tls_context(settings)  # reads the TLS files now, off the event loop; cached
    except MqttTlsError as e:
        sys.exit(f"citysense serve: {e}")
    _setup_logging(settings.log_level)
    registry = _registry(settings.registry)
    log.info(
        "registry %s: %d areas, %d devices; MQTT %s:%d; InfluxDB %s database %r",
        settings.registry,
        len(registry.areas),
        len(registry.devices),
        settings.mqtt_host,
        settings.mqtt_port,
        settings.influx_url,
        settings.influx_database,
    )
    log.info("to see the data: %s", operator_query_hint(settings))
    try:
        asyncio.run(_until_signalled(lambda stop: serve(settings, registry, stop)))
    except StartRefused as e:
        sys.exit(f"citysense: {e}")
    return 0


def operator_query_hint(settings: Settings) -> str:
    """The InfluxQL an operator would run to see what arrived in the last five minutes."""
    query = (
        "SELECT count(seq) FROM gate, river, road, gate_event, road_event WHERE time > now() - 5m"
    )
    return (
        f"influx -host {settings.influx_host} -port {settings.influx_port} "
        f"-database {settings.influx_database} -precision rfc3339 -execute '{query}'"
    )


# --- devices, dead letters, registry ---------------------------------------------------------


def cmd_devices(args: argparse.Namespace) -> int:
    """List registry devices with their attributes and area path."""
    settings = _settings()
    registry = _registry(args.registry or settings.registry)
    devices = [d for d in registry.devices.values() if args.kind is None or d.kind == args.kind]
    if args.json:
        _print_json(
            [
                {**d.model_dump(mode="json"), "area_path": registry.device_path(d.id).tags()}
                for d in devices
            ]
        )
        return 0
    rows = []
    for d in devices:
        path = registry.device_path(d.id)
        place = " / ".join(a.name for a in reversed(path.areas[:-1]))
        rows.append((d.id, d.kind, d.name, place, f"{d.lat:.4f},{d.lon:.4f}", d.report_interval_s))
    _print_table(rows, ("id", "kind", "name", "place", "lat,lon", "every_s"))
    return 0


def cmd_deadletters(args: argparse.Namespace) -> int:
    """List dead letters, newest first, with a count per reason."""
    from ingest.deadletters import DeadLetterStore, store_path

    settings = _settings()
    path = store_path(settings.data_dir)
    if not path.exists():
        letters, counts = [], {}
    else:
        store = DeadLetterStore(path)
        letters, counts = store.list(reason=args.reason, limit=args.limit), store.counts()
        store.close()
    if args.json:
        _print_json({"counts": counts, "dead_letters": [d.model_dump() for d in letters]})
        return 0
    print("by reason: " + (", ".join(f"{r}={n}" for r, n in sorted(counts.items())) or "none"))
    rows = [
        (
            d.id,
            datetime.fromtimestamp(d.received_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S"),
            d.reason,
            d.topic,
            d.detail[:60],
            d.payload[:40].replace("\n", " "),
        )
        for d in letters
    ]
    _print_table(rows, ("id", "received (UTC)", "reason", "topic", "detail", "payload"))
    return 0


def cmd_registry_check(args: argparse.Namespace) -> int:
    """Validate a registry file without running anything."""
    try:
        registry = load_registry(args.file)
    except RegistryError as e:
        print(e, file=sys.stderr)
        return 1
    per_kind = {k.value: sum(d.kind == k for d in registry.devices.values()) for k in Kind}
    print(
        f"{args.file}: OK, {len(registry.areas)} areas, {len(registry.devices)} devices {per_kind}"
    )
    return 0


def cmd_rules_check(args: argparse.Namespace) -> int:
    """Validate a rule file (against the registry) without running anything."""
    from rules import RulesError, load_rules

    settings = _settings()
    registry = _registry(args.registry or settings.registry)
    try:
        rules = load_rules(args.file, registry)
    except RulesError as e:
        print(e, file=sys.stderr)
        return 1
    print(f"{args.file}: OK, {len(rules)} rules checked against {len(registry.devices)} devices")
    return 0


def cmd_alerts(args: argparse.Namespace) -> int:
    """List, acknowledge or resolve alerts in the alert store."""
    from rules.alerts import AlertState, InvalidTransition
    from rules.store import AlertNotFound, AlertStore, sqlite_url

    settings = _settings()
    store = AlertStore(sqlite_url(settings.data_dir))
    try:
        if args.action == "list":
            states = [AlertState(args.state)] if args.state else []
            alerts = store.list(states=states, area_id=args.area, limit=args.limit)
            if args.json:
                _print_json([a.model_dump(mode="json") for a in alerts])
            else:
                rows = [
                    (
                        a.id,
                        a.state.value,
                        a.severity.value,
                        a.rule_id,
                        a.device_id,
                        a.areas.get(Level.GRID, ""),
                        a.escalation_level.value,
                        a.repeat_count,
                        datetime.fromtimestamp(a.opened_ms / 1000, UTC).strftime("%m-%d %H:%M:%S"),
                    )
                    for a in alerts
                ]
                _print_table(
                    rows,
                    (
                        "id",
                        "state",
                        "severity",
                        "rule",
                        "device",
                        "grid",
                        "level",
                        "repeats",
                        "opened (UTC)",
                    ),
                )
            return 0
        step = store.acknowledge if args.action == "ack" else store.resolve
        now = int(datetime.now(UTC).timestamp() * 1000)
        try:
            changed, event = step(args.id, args.by, now, args.note)
        except AlertNotFound:
            print(f"citysense alerts: no alert {args.id}", file=sys.stderr)
            return 1
        except InvalidTransition as e:
            print(f"citysense alerts: {e}", file=sys.stderr)
            return 1
        _announce_by_cli(settings, changed, event)
        print(f"{changed.id}: {changed.state.value} by {args.by}")
        return 0
    finally:
        store.close()


def _announce_by_cli(settings: Settings, alert: Any, event: Any) -> None:
    """Tell the alert's audience over MQTT, as the service does for its own changes."""
    import paho.mqtt.publish as mqtt_publish

    from devices.topics import alert_topic

    payload = json.dumps(
        {"alert": alert.model_dump(mode="json"), "event": event.model_dump(mode="json")},
        ensure_ascii=False,
    )
    password = settings.mqtt_password.get_secret_value() if settings.mqtt_password else None
    auth = (
        {"username": settings.mqtt_username, "password": password}
        if settings.mqtt_username
        else None
    )
    try:
        mqtt_publish.multiple(
            [
                {"topic": alert_topic(level, area), "payload": payload, "qos": 1}
                for level, area in alert.audience
            ],
            hostname=settings.mqtt_host,
            port=settings.mqtt_port,
            auth=auth,  # type: ignore[arg-type]
        )
    except OSError as e:
        print(f"citysense alerts: stored, but not announced (broker: {e})", file=sys.stderr)


# --- API tokens ------------------------------------------------------------------------------


def cmd_tokens(args: argparse.Namespace) -> int:
    """Add, list or revoke the HTTP API's bearer tokens."""
    settings = _settings()
    path = tokens_path(settings)
    try:
        store = TokenStore.load(path)
        if args.action == "add":
            return _add_token(args, settings, store)
        if args.action == "revoke":
            if not store.revoke(args.id):
                print(f"citysense tokens: no token {args.id} in {path}", file=sys.stderr)
                return 1
            print(f"revoked {args.id}")
            return 0
    except TokensFileError as e:
        print(f"citysense tokens: {e}", file=sys.stderr)
        return 1
    principals = store.list()
    if args.json:
        _print_json(
            [
                {"id": p.token_id, "name": p.name, "role": p.role.value, "areas": sorted(p.areas)}
                for p in principals
            ]
        )
    else:
        rows = [
            (p.token_id, p.name, p.role.value, ",".join(sorted(p.areas)) or "(all)")
            for p in principals
        ]
        _print_table(rows, ("id", "name", "role", "areas"))
        if not principals:
            print(f"no tokens in {path}", file=sys.stderr)
    return 0


def _add_token(args: argparse.Namespace, settings: Settings, store: TokenStore) -> int:
    role = Role(args.role)
    areas: list[str] = list(dict.fromkeys(args.area or []))
    if role is Role.GRID_WORKER and not areas:
        print("citysense tokens add: a grid_worker needs --area (one or more)", file=sys.stderr)
        return 2
    if role is Role.OPERATOR and areas:
        print("citysense tokens add: an operator sees everything; drop --area", file=sys.stderr)
        return 2
    if areas:
        registry_file = args.registry or settings.registry
        registry = _registry(registry_file)
        unknown = [a for a in areas if a not in registry.areas]
        if unknown:
            print(
                f"citysense tokens add: no area {', '.join(unknown)} in {registry_file}",
                file=sys.stderr,
            )
            return 2
    try:
        token, principal = store.add(args.name, role, areas)
    except ValueError as e:
        print(f"citysense tokens add: {e}", file=sys.stderr)
        return 2
    print(token)
    scope = ", ".join(sorted(principal.areas)) or "all areas"
    print(
        f"created {principal.token_id} for {principal.name} ({role.value}: {scope}) in "
        f"{store.path}; the token above is shown only now, the file keeps its hash\n"
        f'use it: curl -H "Authorization: Bearer <token>" '
        f"http://{settings.api_host}:{settings.api_port}/alerts",
        file=sys.stderr,
    )
    return 0


# --- broker config ---------------------------------------------------------------------------


def cmd_broker_config(args: argparse.Namespace) -> int:
    """Write the broker's password file, ACL, listeners and local TLS files into --out."""
    from devices.credentials import (
        DEV_SECRET_ENV,
        LOCAL_EXAMPLE_DEV_SECRET,
        LOCAL_EXAMPLE_INGEST_PASSWORD,
    )
    from ingest.brokerconfig import BrokerConfigError, write_broker_files
    from ingest.stack import MissingBinaryError
    from ingest.tls import TlsError
    from ingest.workers import WorkersError, load_workers

    settings = _checked_settings("broker-config")
    registry = _registry(args.registry or settings.registry)
    try:
        workers = load_workers(args.workers, registry)
    except WorkersError as e:
        print(f"citysense broker-config: {e}", file=sys.stderr)
        return 1
    dev_secret = settings.dev_secret.get_secret_value()
    if dev_secret == LOCAL_EXAMPLE_DEV_SECRET:
        print(
            f"citysense broker-config: warning: {DEV_SECRET_ENV} is not set; device and worker "
            "passwords are derived from the public local example secret, for local use only",
            file=sys.stderr,
        )
    password = settings.mqtt_password.get_secret_value()
    if password == LOCAL_EXAMPLE_INGEST_PASSWORD:
        print(
            "citysense broker-config: warning: CITYSENSE_MQTT_PASSWORD is not set; the ingest "
            "user gets the public local example password, for local use only",
            file=sys.stderr,
        )
    try:
        files = write_broker_files(
            args.out,
            registry,
            workers,
            dev_secret=dev_secret,
            ingest_password=password,
            ingest_user=settings.mqtt_username,
            port=args.port or settings.mqtt_port,
            tls_port=args.tls_port,
            tls_host=args.tls_bind or settings.mqtt_tls_bind,
        )
    except (BrokerConfigError, MissingBinaryError, TlsError, OSError) as e:
        print(f"citysense broker-config: {e}", file=sys.stderr)
        return 1
    print(
        f"wrote {files.passwords}, {files.acl} ({files.users} users) and {files.listeners} "
        f"(plain :{files.port}, TLS :{files.tls_port}, CA {files.tls.ca_cert}); append "
        "listeners.conf after mosquitto.conf"
    )
    return 0


# --- simulate and run ------------------------------------------------------------------------


def cmd_simulate(args: argparse.Namespace) -> int:
    """Publish simulated device traffic; print what was sent."""
    from simulator import (
        MqttTarget,
        SimulatorError,
        config_from_args,
        registry_for_run,
        run_simulation,
    )

    settings = _settings()
    _setup_logging(settings.log_level)
    try:
        config = config_from_args(args)
        registry = registry_for_run(config, lambda: _registry(settings.registry))
    except (ValidationError, SimulatorError) as e:
        print(f"citysense simulate: {e}", file=sys.stderr)
        return 2
    # Each simulated device logs in as itself, with its password derived from the dev secret.
    target = MqttTarget(
        host=settings.mqtt_host,
        port=settings.mqtt_port,
        dev_secret=settings.dev_secret.get_secret_value(),
    )

    async def simulate(stop: asyncio.Event) -> Any:
        task = asyncio.create_task(run_simulation(config, registry, target))
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait([task, stopper], return_when=asyncio.FIRST_COMPLETED)
        task.cancel()  # a no-op when the run ended by itself; else it says goodbye and reports
        stopper.cancel()
        return await task

    try:
        report = asyncio.run(_until_signalled(simulate))
    except SimulatorError as e:
        print(f"citysense simulate: {e}", file=sys.stderr)
        return 2
    print(report.to_json() if config.as_json else report.table(), flush=True)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """The whole thing: local stack, ingest service and simulator, until Ctrl-C."""
    from ingest.demo import run_demo

    settings = _checked_settings("run")  # it runs `stack up` and `serve` too
    _setup_logging(settings.log_level)
    return run_demo(settings, REPO_ROOT, args)


def cmd_config(args: argparse.Namespace) -> int:
    """``config show``: the effective settings, secrets masked, and where each came from."""
    from ingest.configview import render_json, render_text, shown_settings

    settings = _settings()  # a bad file exits here, naming it
    rows, path = shown_settings(settings), config_file_path()
    print(render_json(rows, path) if args.json else render_text(rows, path))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="citysense", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("stack", help="start/stop the local Mosquitto and InfluxDB")
    p.add_argument("action", choices=("up", "down", "status"))
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_stack)

    p = sub.add_parser("serve", help="run the ingest service")
    p.set_defaults(func=cmd_serve)

    from simulator import add_arguments

    p = sub.add_parser("simulate", help="publish simulated device traffic")
    add_arguments(p)
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("run", help="stack + service + simulator until Ctrl-C (make run)")
    p.add_argument("--rate", type=float, default=20.0, help="simulated messages/s (default 20)")
    p.add_argument(
        "--scenario",
        default="flood,pollution,accident,tailgating",
        help="simulator scenarios (default flood,pollution,accident,tailgating)",
    )
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("devices", help="registry devices")
    dsub = p.add_subparsers(dest="action", required=True)
    q = dsub.add_parser("list", help="list devices with attributes and area path")
    q.add_argument("--kind", choices=[k.value for k in Kind])
    q.add_argument("--registry", type=Path, help="registry file (default $CITYSENSE_REGISTRY)")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_devices)

    p = sub.add_parser("deadletters", help="rejected messages")
    dsub = p.add_subparsers(dest="action", required=True)
    q = dsub.add_parser("list", help="list dead letters, newest first")
    q.add_argument("--reason")
    q.add_argument("--limit", type=int, default=50)
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_deadletters)

    p = sub.add_parser("registry", help="registry files")
    dsub = p.add_subparsers(dest="action", required=True)
    q = dsub.add_parser("check", help="validate a registry file")
    q.add_argument("file", type=Path)
    q.set_defaults(func=cmd_registry_check)

    p = sub.add_parser("alerts", help="alerts in the alert store")
    dsub = p.add_subparsers(dest="action", required=True)
    q = dsub.add_parser("list", help="list alerts, newest first")
    q.add_argument("--area", "--grid", dest="area", help="only alerts in this area (any level)")
    q.add_argument("--state", choices=["open", "acknowledged", "resolved"])
    q.add_argument("--limit", type=int, default=50)
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_alerts)
    for action, text in (("ack", "acknowledge an alert"), ("resolve", "resolve an alert")):
        q = dsub.add_parser(action, help=text)
        q.add_argument("id")
        q.add_argument("--by", required=True, help="who (the grid worker's name)")
        q.add_argument("--note")
        q.set_defaults(func=cmd_alerts)

    p = sub.add_parser("rules", help="rule files")
    dsub = p.add_subparsers(dest="action", required=True)
    q = dsub.add_parser("check", help="validate a rule file against the registry")
    q.add_argument("file", type=Path)
    q.add_argument("--registry", type=Path, help="registry file (default $CITYSENSE_REGISTRY)")
    q.set_defaults(func=cmd_rules_check)

    p = sub.add_parser(
        "broker-config", help="write Mosquitto's passwords, ACL, listeners and local TLS files"
    )
    p.add_argument("--out", type=Path, required=True, help="directory to write into")
    p.add_argument("--port", type=int, help="plain listener port (default $CITYSENSE_MQTT_PORT)")
    p.add_argument("--tls-port", type=int, default=8883, help="TLS listener port (default 8883)")
    p.add_argument(
        "--tls-bind", default=None, help="TLS listener address (default CITYSENSE_MQTT_TLS_BIND)"
    )
    p.add_argument("--registry", type=Path, help="registry file (default $CITYSENSE_REGISTRY)")
    p.add_argument(
        "--workers",
        type=Path,
        default=Path("config/workers.yaml"),
        help="grid workers file (default config/workers.yaml)",
    )
    p.set_defaults(func=cmd_broker_config)

    p = sub.add_parser("tokens", help="bearer tokens of the HTTP API")
    dsub = p.add_subparsers(dest="action", required=True)
    q = dsub.add_parser("add", help="create a token and print it (only this once)")
    q.add_argument("--name", required=True, help="whose token (person or system)")
    q.add_argument("--role", required=True, choices=[r.value for r in Role])
    q.add_argument(
        "--area",
        action="extend",
        nargs="+",
        metavar="ID",
        help="area id(s) a grid_worker sees, at any level (repeatable)",
    )
    q.add_argument("--registry", type=Path, help="registry file (default $CITYSENSE_REGISTRY)")
    q.set_defaults(func=cmd_tokens)
    q = dsub.add_parser("list", help="list tokens (never their secrets or hashes)")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_tokens)
    q = dsub.add_parser("revoke", help="revoke a token by its id")
    q.add_argument("id")
    q.set_defaults(func=cmd_tokens)

    p = sub.add_parser("config", help="the settings (citysense.toml, CITYSENSE_*)")
    dsub = p.add_subparsers(dest="action", required=True)
    q = dsub.add_parser("show", help="effective settings, secrets masked, with their sources")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_config)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``citysense`` console script."""
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
