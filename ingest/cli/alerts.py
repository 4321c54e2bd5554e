"""Alerts in the alert store: list them, acknowledge or resolve one as a grid worker."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from typing import Any

from devices.kinds import Level
from ingest.cli.common import (
    print_json,
    print_table,
    store_settings,
)
from ingest.settings import Settings


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The subcommands of this module."""
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


def cmd_alerts(args: argparse.Namespace) -> int:
    """List, acknowledge or resolve alerts in the alert store."""
    from ingest.alerts.store import AlertNotFound, AlertStore, store_url
    from rules.alerts import AlertState, InvalidTransition, ReservedActor

    settings = store_settings()
    database = settings.database_url.get_secret_value() if settings.database_url else None
    store = AlertStore(store_url(database, settings.data_dir))
    try:
        if args.action == "list":
            states = [AlertState(args.state)] if args.state else []
            alerts = store.list(states=states, area_id=args.area, limit=args.limit)
            if args.json:
                print_json([a.model_dump(mode="json") for a in alerts])
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
                print_table(
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
        except (InvalidTransition, ReservedActor) as e:
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
            [{"topic": topic, "payload": payload, "qos": 1} for topic in alert.topics],
            hostname=settings.mqtt_host,
            port=settings.mqtt_port,
            auth=auth,  # type: ignore[arg-type]
        )
    except OSError as e:
        print(f"citysense alerts: stored, but not announced (broker: {e})", file=sys.stderr)
