"""``citysense gateway hj212|sl651``: stations that speak HJ 212-2017 or SL 651-2014 over TCP."""

from __future__ import annotations

import argparse
import asyncio
import logging

from ingest.cli.common import checked_settings, registry_at, setup_logging, until_signalled

log = logging.getLogger("citysense")


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The subcommands of this module."""
    p = sub.add_parser(
        "gateway",
        help="serve field stations over TCP: HJ 212 (water quality) or SL 651 (hydrology)",
    )
    p.add_argument("protocol", choices=("hj212", "sl651"))
    p.add_argument(
        "--port",
        type=int,
        help="TCP port (default CITYSENSE_GATEWAY_HJ212_PORT / _SL651_PORT; 0: any free port)",
    )
    p.set_defaults(func=cmd_gateway)


def cmd_gateway(args: argparse.Namespace) -> int:
    """Run one protocol's gateway until SIGINT/SIGTERM."""
    from ingest.gateway.service import run_gateway

    settings = checked_settings("gateway")
    setup_logging(settings.log_level)
    registry = registry_at(settings.registry)
    if args.port is not None and not 0 <= args.port <= 65535:
        raise SystemExit(f"citysense gateway: --port {args.port} is not a TCP port")

    def ready(port: int) -> None:
        # One line on stdout a supervisor (or a test) can wait for.
        print(f"citysense gateway {args.protocol} listening on port {port}", flush=True)

    asyncio.run(
        until_signalled(
            lambda stop: run_gateway(
                settings, registry, args.protocol, stop, port=args.port, on_ready=ready
            )
        )
    )
    return 0
