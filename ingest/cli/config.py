"""The settings as the service sees them: ``citysense config show``."""

from __future__ import annotations

import argparse

from ingest.cli.common import load_settings
from ingest.configfile import config_file_path
from ingest.configview import render_json, render_text, shown_settings


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The subcommands of this module."""
    p = sub.add_parser("config", help="the settings (citysense.toml, CITYSENSE_*)")
    dsub = p.add_subparsers(dest="action", required=True)
    q = dsub.add_parser("show", help="effective settings, secrets masked, with their sources")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_config)


def cmd_config(args: argparse.Namespace) -> int:
    """``config show``: the effective settings, secrets masked, and where each came from."""
    settings = load_settings()  # a bad file exits here, naming it
    rows, path = shown_settings(settings), config_file_path()
    print(render_json(rows, path) if args.json else render_text(rows, path))
    return 0
