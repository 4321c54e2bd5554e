"""The ``citysense simulate`` options, for the CLI to register, and their translation."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from devices.kinds import Kind
from simulator.config import TRANSPORTS, GatewayTarget, SimulationConfig, Transport
from simulator.errors import ConfigError
from simulator.scenarios import ANY_SCENARIO, SCENARIOS


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _kinds(text: str) -> list[Kind]:
    try:
        return [Kind(name) for name in _names(text)]
    except ValueError:
        known = ",".join(k.value for k in Kind)
        raise argparse.ArgumentTypeError(f"kinds are {known}, got {text!r}") from None


def _transports(text: str) -> list[Transport]:
    names = _names(text)
    unknown = [name for name in names if name not in TRANSPORTS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"protocols are {','.join(TRANSPORTS)}, got {text!r}")
    return [name for name in TRANSPORTS if name in names]


def _gateway(text: str) -> GatewayTarget:
    try:
        return GatewayTarget.parse(text)
    except (ValueError, ValidationError):
        raise argparse.ArgumentTypeError(f"not HOST:PORT: {text!r}") from None


def parse_scenario_device(text: str | None) -> dict[str, str]:
    """``ID`` (every scenario) or ``flood=river-01,accident=road-02`` (per scenario)."""
    if not text:
        return {}
    chosen: dict[str, str] = {}
    for part in _names(text):
        name, sep, device_id = part.partition("=")
        if sep:
            chosen[name.strip()] = device_id.strip()
        else:
            chosen[ANY_SCENARIO] = part
    return chosen


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the simulator's options on ``parser`` (the ``simulate`` subcommand)."""
    parser.add_argument(
        "--devices", type=int, metavar="N", help="simulate the first N devices (default: all)"
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=10.0,
        metavar="R",
        help="messages per second, all devices together (default: %(default)s)",
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=0.0,
        metavar="S",
        help="run for S seconds; 0 runs until Ctrl-C (default: %(default)s)",
    )
    parser.add_argument(
        "--scenario",
        action="append",
        type=_names,
        default=[],
        metavar="NAME[,NAME...]",
        help=f"inject trouble: {', '.join(SCENARIOS)} (repeatable or comma-separated)",
    )
    parser.add_argument(
        "--scenario-at",
        type=float,
        metavar="S",
        help="start scenarios S seconds into the run (default: 10%% of --duration, or 5)",
    )
    parser.add_argument(
        "--scenario-device",
        metavar="ID|NAME=ID,...",
        help="the device scenarios act on (default: the first suitable one)",
    )
    parser.add_argument(
        "--kinds",
        type=_kinds,
        default=list(Kind),
        metavar="KIND[,KIND...]",
        help="device kinds to simulate (default: gate,river,road)",
    )
    parser.add_argument(
        "--protocol",
        type=_transports,
        default=["mqtt"],
        metavar="P[,P...]",
        help="which devices, by how they report: mqtt (those without a protocol in the"
        " registry, as themselves), hj212, sl651 (the registry's stations of that protocol,"
        " over TCP to its citysense gateway) (default: mqtt)",
    )
    parser.add_argument(
        "--gateway-hj212",
        type=_gateway,
        metavar="HOST:PORT",
        help="the HJ 212 gateway (default: gateway_bind and gateway_hj212_port of the settings)",
    )
    parser.add_argument(
        "--gateway-sl651",
        type=_gateway,
        metavar="HOST:PORT",
        help="the SL 651 gateway (default: gateway_bind and gateway_sl651_port of the settings)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="random seed; same seed, same data (default: 0)"
    )
    parser.add_argument(
        "--synthetic",
        type=int,
        metavar="N",
        help="simulate N synthetic devices (ids syn-KIND-0001...) instead of the registry's",
    )
    parser.add_argument(
        "--write-registry",
        type=Path,
        metavar="PATH",
        help="save the registry used (e.g. the synthetic one) as YAML for the ingest service",
    )
    parser.add_argument(
        "--json", action="store_true", help="print the report as JSON instead of a table"
    )


def config_from_args(args: argparse.Namespace) -> SimulationConfig:
    """The SimulationConfig for parsed options; raises ConfigError saying what is wrong."""
    scenarios: Sequence[Sequence[str]] = args.scenario or []
    try:
        return _config(args, scenarios)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'options'}: "
            + err["msg"].removeprefix("Value error, ")
            for err in e.errors(include_url=False)
        )
        raise ConfigError(problems) from None


def _config(args: argparse.Namespace, scenarios: Sequence[Sequence[str]]) -> SimulationConfig:
    return SimulationConfig(
        devices=args.devices,
        rate=args.rate,
        duration=args.duration,
        scenarios=tuple(name for group in scenarios for name in group),
        scenario_at=args.scenario_at,
        scenario_device=parse_scenario_device(args.scenario_device),
        kinds=tuple(args.kinds),
        seed=args.seed,
        synthetic=args.synthetic,
        write_registry=args.write_registry,
        as_json=args.json,
        protocols=tuple(args.protocol),
        gateways={
            protocol: target
            for protocol, target in (("hj212", args.gateway_hj212), ("sl651", args.gateway_sl651))
            if target is not None
        },
    )
