"""What every subcommand needs: settings, the registry, printing, logging, signals."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from devices.registry import Registry, RegistryError, load_registry
from ingest.configfile import ConfigFileError, where_set
from ingest.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]


def load_settings() -> Settings:
    try:
        return Settings()
    except ConfigFileError as e:
        sys.exit(f"citysense: {e}")
    except ValidationError as e:
        lines = where_set([str(err["loc"][0]) for err in e.errors() if err["loc"]])
        sys.exit("\n".join(["citysense: bad CITYSENSE_* setting:", *lines, str(e)]))


def store_settings() -> Settings:
    """The settings of a command that reads the shared database (alerts, tokens, dead
    letters, cluster): in nats mode with ``CITYSENSE_DATABASE_URL`` unset, the stack's own
    PostgreSQL (``ingest/ops/stack.py``)."""
    from ingest.ops.stack import with_stack_database

    return with_stack_database(load_settings())


def checked_settings(command: str) -> Settings:
    """The settings, refused at start if production still has a public secret (issue 13)."""
    from ingest.ops.production import PublicSecretError, check_production

    settings = load_settings()
    try:
        check_production(settings)
    except PublicSecretError as e:
        sys.exit(f"citysense {command}: {e}")
    return settings


def registry_at(path: Path) -> Registry:
    try:
        return load_registry(path)
    except RegistryError as e:
        sys.exit(f"citysense: {e}")


def print_json(data: Any) -> None:
    print(json.dumps(data, ensure_ascii=False, indent=2, default=str))


def print_table(rows: Sequence[Sequence[object]], header: Sequence[str]) -> None:
    cells = [list(map(str, header)), *[[str(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for r in cells:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


async def until_signalled(main: Callable[[asyncio.Event], Any]) -> Any:
    """Run ``main(stop)``; SIGINT/SIGTERM set ``stop`` so it can shut down in order."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return await main(stop)
