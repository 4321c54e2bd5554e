"""What the service knows: devices and dead letters; registry and rule files checked."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path

from devices.kinds import Kind
from devices.registry import RegistryError, load_registry
from ingest.cli.common import (
    load_settings,
    print_json,
    print_table,
    registry_at,
    store_settings,
)


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The subcommands of this module."""
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

    p = sub.add_parser("rules", help="rule files")
    dsub = p.add_subparsers(dest="action", required=True)
    q = dsub.add_parser("check", help="validate a rule file against the registry")
    q.add_argument("file", type=Path)
    q.add_argument("--registry", type=Path, help="registry file (default $CITYSENSE_REGISTRY)")
    q.set_defaults(func=cmd_rules_check)


def cmd_devices(args: argparse.Namespace) -> int:
    """List registry devices with their attributes and area path."""
    settings = load_settings()
    registry = registry_at(args.registry or settings.registry)
    devices = [d for d in registry.devices.values() if args.kind is None or d.kind == args.kind]
    if args.json:
        print_json(
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
    print_table(rows, ("id", "kind", "name", "place", "lat,lon", "every_s"))
    return 0


def cmd_deadletters(args: argparse.Namespace) -> int:
    """List dead letters, newest first, with a count per reason."""
    from ingest.sinks.deadletters import DeadLetterStore, store_path

    settings = store_settings()
    where = settings.database_url.get_secret_value() if settings.database_url else None
    path = store_path(settings.data_dir)
    if where is None and not path.exists():  # nothing rejected yet: create no file
        letters, counts = [], {}
    else:
        store = DeadLetterStore(where or path)
        letters, counts = store.list(reason=args.reason, limit=args.limit), store.counts()
        store.close()
    if args.json:
        print_json({"counts": counts, "dead_letters": [d.model_dump() for d in letters]})
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
    print_table(rows, ("id", "received (UTC)", "reason", "topic", "detail", "payload"))
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

    settings = load_settings()
    registry = registry_at(args.registry or settings.registry)
    try:
        rules = load_rules(args.file, registry)
    except RulesError as e:
        print(e, file=sys.stderr)
        return 1
    print(f"{args.file}: OK, {len(rules)} rules checked against {len(registry.devices)} devices")
    return 0
