"""Running things: the local stack, the service, the simulator, and all three at once."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from typing import Any

from pydantic import ValidationError

from ingest.cli.common import (
    REPO_ROOT,
    checked_settings,
    load_settings,
    print_json,
    print_table,
    registry_at,
    setup_logging,
    until_signalled,
)
from simulator import add_arguments

log = logging.getLogger("citysense")


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The subcommands of this module."""
    p = sub.add_parser(
        "stack",
        help="start/stop the local Mosquitto and InfluxDB (nats: NATS, InfluxDB, PostgreSQL)",
    )
    p.add_argument("action", choices=("up", "down", "status"))
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_stack)

    p = sub.add_parser("serve", help="run the ingest service")
    p.set_defaults(func=cmd_serve)

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


def cmd_stack(args: argparse.Namespace) -> int:
    """Start, stop or show the local stack (``ingest.ops.stack``)."""
    from ingest.ops import processes, stack

    settings = checked_settings("stack up") if args.action == "up" else load_settings()
    rows: list[tuple[str, int, str, str]]
    if args.action == "up":
        try:
            procs = stack.up(settings, REPO_ROOT)
        except processes.StackError as e:
            print(f"citysense stack up: {e}", file=sys.stderr)
            return 1
        rows = [(p.name, p.pid, p.address, str(p.log_path)) for p in procs]
    elif args.action == "down":
        stopped = stack.down(settings)
        if args.json:
            print_json({"stopped": stopped})
        else:
            print("stopped: " + (", ".join(stopped) or "nothing was running"))
        return 0
    else:
        rows = [
            (p.name, p.pid, p.address, "up" if alive else "down")
            for p, alive in stack.status(settings)
        ]
    if args.json:
        print_json([dict(zip(("name", "pid", "address", "detail"), r, strict=True)) for r in rows])
    else:
        print_table(rows, ("service", "pid", "address", "log" if args.action == "up" else "state"))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the ingest service until SIGINT/SIGTERM."""
    from ingest.cases.config import CaseConfigError, load_case_config
    from ingest.mqtt.tls import MqttTlsError, mqtt_tls_context
    from ingest.ops.nats import with_cluster_nodes
    from ingest.ops.stack import operator_query_hint, with_stack_database
    from ingest.service import StartRefused, serve

    settings = with_stack_database(with_cluster_nodes(checked_settings("serve")))
    try:
        mqtt_tls_context(settings)  # reads the TLS files now, off the event loop; cached
    except MqttTlsError as e:
        sys.exit(f"citysense serve: {e}")
    try:  # a bad cases file is named now, not as a traceback after the database is up
        load_case_config(settings.cases)
    except CaseConfigError as e:
        sys.exit(f"citysense serve: {e}")
    setup_logging(settings.log_level)
    registry = registry_at(settings.registry)
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
        asyncio.run(until_signalled(lambda stop: serve(settings, registry, stop)))
    except StartRefused as e:
        sys.exit(f"citysense: {e}")
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    """Publish simulated device traffic; print what was sent."""
    from simulator import (
        GatewayTarget,
        MqttTarget,
        SimulatorError,
        config_from_args,
        registry_for_run,
        run_simulation,
    )

    settings = load_settings()
    setup_logging(settings.log_level)
    try:
        config = config_from_args(args)
        registry = registry_for_run(config, lambda: registry_at(settings.registry))
    except (ValidationError, SimulatorError) as e:
        print(f"citysense simulate: {e}", file=sys.stderr)
        return 2
    # Each simulated device logs in as itself, with its password derived from the dev secret.
    target = MqttTarget(
        host=settings.mqtt_host,
        port=settings.mqtt_port,
        dev_secret=settings.dev_secret.get_secret_value(),
    )
    # Field stations (--protocol hj212,sl651) reach the gateways where the settings have them
    # listen; --gateway-hj212/--gateway-sl651 (in config) override.
    gateways = {
        "hj212": GatewayTarget.listening_on(settings.gateway_bind, settings.gateway_hj212_port),
        "sl651": GatewayTarget.listening_on(settings.gateway_bind, settings.gateway_sl651_port),
    }

    async def simulate(stop: asyncio.Event) -> Any:
        task = asyncio.create_task(run_simulation(config, registry, target, gateways))
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait([task, stopper], return_when=asyncio.FIRST_COMPLETED)
        task.cancel()  # a no-op when the run ended by itself; else it says goodbye and reports
        stopper.cancel()
        return await task

    try:
        report = asyncio.run(until_signalled(simulate))
    except SimulatorError as e:
        print(f"citysense simulate: {e}", file=sys.stderr)
        return 2
    print(report.to_json() if config.as_json else report.table(), flush=True)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """The whole thing: local stack, ingest service and simulator, until Ctrl-C."""
    from ingest.ops.demo import run_demo

    settings = checked_settings("run")  # it runs `stack up` and `serve` too
    setup_logging(settings.log_level)
    return run_demo(settings, REPO_ROOT, args)
