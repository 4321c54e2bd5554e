"""The ``citysense`` command: one console script, one subcommand per job.

This is an entry point, so it may import every package: the simulator's options and run
function are wired here, keeping ``simulator`` free of ``ingest``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from ingest.cli import access, alerts, cluster, config, gateway, lookup, quality, running


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="citysense", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for room in (running, gateway, lookup, alerts, quality, cluster, access, config):
        room.add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``citysense`` console script."""
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result
