"""Who may connect: bearer tokens of the HTTP API and Mosquitto's passwords, ACL and TLS."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError

from devices.registry import Registry
from ingest.api.tokens import Role, TokensFileError, TokenStore
from ingest.api.tokentable import open_tokens
from ingest.cli.common import (
    checked_settings,
    print_json,
    print_table,
    registry_at,
    store_settings,
)
from ingest.people import Person
from ingest.settings import Settings


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The subcommands of this module."""
    p = sub.add_parser(
        "broker-config", help="write Mosquitto's passwords, ACL, listeners and local TLS files"
    )
    p.add_argument("--out", type=Path, required=True, help="directory to write into")
    p.add_argument("--port", type=int, help="plain listener port (default $CITYSENSE_MQTT_PORT)")
    p.add_argument(
        "--tls-port", type=int, help="TLS listener port (default $CITYSENSE_MQTT_TLS_PORT)"
    )
    p.add_argument(
        "--tls-bind", default=None, help="TLS listener address (default CITYSENSE_MQTT_TLS_BIND)"
    )
    p.add_argument("--registry", type=Path, help="registry file (default $CITYSENSE_REGISTRY)")
    p.add_argument("--workers", type=Path, help="grid workers file (default $CITYSENSE_WORKERS)")
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
        help="area id(s) a grid_worker sees, at any level (repeatable); a department's: "
        "fewer of its own",
    )
    q.add_argument(
        "--department",
        metavar="ID",
        help="a department token's department (registry id; the token's --name is that id)",
    )
    q.add_argument("--registry", type=Path, help="registry file (default $CITYSENSE_REGISTRY)")
    q.add_argument(
        "--workers",
        type=Path,
        help="people file a person's --name is checked in (default $CITYSENSE_WORKERS)",
    )
    q.set_defaults(func=cmd_tokens)
    q = dsub.add_parser("list", help="list tokens (never their secrets or hashes)")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_tokens)
    q = dsub.add_parser("revoke", help="revoke a token by its id")
    q.add_argument("id")
    q.set_defaults(func=cmd_tokens)

    p = sub.add_parser("audit", help="the access audit of department tokens")
    dsub = p.add_subparsers(dest="action", required=True)
    q = dsub.add_parser("list", help="who read what of the shared data, newest first")
    q.add_argument("--department", help="one department's reads (registry id)")
    q.add_argument("--since", type=datetime.fromisoformat, help="at or after (ISO 8601)")
    q.add_argument("--until", type=datetime.fromisoformat, help="before (ISO 8601)")
    q.add_argument("--limit", type=int, default=100)
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_audit)


def cmd_audit(args: argparse.Namespace) -> int:
    """List the access audit (ingest/sharing/audit.py) of the alert store's database."""
    from ingest.alerts.store import store_url
    from ingest.sharing.audit import AuditLog

    settings = store_settings()
    database = settings.database_url.get_secret_value() if settings.database_url else None
    try:
        log = AuditLog(store_url(database, settings.data_dir))
        rows = log.list(
            department=args.department,
            since_ms=int(args.since.timestamp() * 1000) if args.since else None,
            until_ms=int(args.until.timestamp() * 1000) if args.until else None,
            limit=args.limit,
        )
        log.close()
    except SQLAlchemyError as e:
        print(f"citysense audit: {e}", file=sys.stderr)
        return 1
    if args.json:
        print_json([asdict(r) for r in rows])
        return 0
    print_table(
        [
            (
                datetime.fromtimestamp(r.at_ms / 1000, UTC).isoformat(timespec="seconds"),
                r.department,
                r.token_id,
                f"{r.method} {r.path}",
                r.data_set or "",
                r.status,
                "" if r.rows is None else r.rows,
                r.code or "",
            )
            for r in rows
        ],
        ("at", "department", "token", "request", "data_set", "status", "rows", "code"),
    )
    return 0


def cmd_tokens(args: argparse.Namespace) -> int:
    """Add, list or revoke the HTTP API's bearer tokens (in the shared database if
    CITYSENSE_DATABASE_URL is set, else in the tokens file)."""
    settings = store_settings()
    try:
        store = open_tokens(settings)
        if args.action == "add":
            return _add_token(args, settings, store)
        if args.action == "revoke":
            if not store.revoke(args.id):
                print(f"citysense tokens: no token {args.id} in {store.where}", file=sys.stderr)
                return 1
            print(f"revoked {args.id}")
            return 0
    except (TokensFileError, SQLAlchemyError) as e:
        print(f"citysense tokens: {e}", file=sys.stderr)
        return 1
    principals = store.list()
    if args.json:
        print_json(
            [
                {"id": p.token_id, "name": p.name, "role": p.role.value, "areas": sorted(p.areas)}
                for p in principals
            ]
        )
    else:
        rows = [
            (p.token_id, p.name, p.role.value, ",".join(sorted(p.areas)) or _all(p.role))
            for p in principals
        ]
        print_table(rows, ("id", "name", "role", "areas"))
        if not principals:
            print(f"no tokens in {store.where}", file=sys.stderr)
    return 0


def _all(role: Role) -> str:
    return "(its department's)" if role is Role.DEPARTMENT else "(all)"


def _not_a_person(args: argparse.Namespace, settings: Settings) -> str | None:
    """Why ``--name`` cannot be a person's token (None if it can): it must be in the people
    file, whose posts say what the token sees."""
    from ingest.people import WorkersError, load_workers

    file = args.workers or settings.workers
    try:
        people = load_workers(file, registry_at(args.registry or settings.registry))
    except WorkersError as e:
        return str(e)
    if all(p.username != args.name for p in people):
        return f"no person {args.name!r} in {file} (a person's token is named by username)"
    return None


def _add_token(args: argparse.Namespace, settings: Settings, store: TokenStore) -> int:
    role = Role(args.role)
    areas: list[str] = list(dict.fromkeys(args.area or []))
    if role is Role.GRID_WORKER and not areas:
        print("citysense tokens add: a grid_worker needs --area (one or more)", file=sys.stderr)
        return 2
    if role is Role.DEPARTMENT or args.department:
        return _add_department(args, settings, store, areas)
    if role is not Role.GRID_WORKER and areas:
        print(
            f"citysense tokens add: an {role} takes no --area"
            if role is Role.OPERATOR
            else f"citysense tokens add: a {role} takes no --area",
            file=sys.stderr,
        )
        return 2
    if role is Role.PERSON and (problem := _not_a_person(args, settings)):
        print(f"citysense tokens add: {problem}", file=sys.stderr)
        return 2
    if areas:
        registry_file = args.registry or settings.registry
        registry = registry_at(registry_file)
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
    scope = ", ".join(sorted(principal.areas)) or (
        "their posts in the people file" if role is Role.PERSON else "all areas"
    )
    print(
        f"created {principal.token_id} for {principal.name} ({role.value}: {scope}) in "
        f"{store.where}; the token above is shown only now, only its hash is kept\n"
        f'use it: curl -H "Authorization: Bearer <token>" '
        f"http://{settings.api_host}:{settings.api_port}/alerts",
        file=sys.stderr,
    )
    return 0


def _add_department(
    args: argparse.Namespace, settings: Settings, store: TokenStore, areas: list[str]
) -> int:
    """``tokens add --role department``: named by a department of the registry, optionally
    narrowed to some of its areas; what it reads is config/sharing.yaml's to say."""
    department = args.department or args.name
    problem = None
    if args.role != Role.DEPARTMENT.value:
        problem = f"--department is for --role department, not {args.role}"
    elif department != args.name:
        problem = f"a department token is named by its department: --name {department}"
    registry_file = args.registry or settings.registry
    registry = registry_at(registry_file)
    dept = registry.departments.get(department)
    if problem is None and dept is None:
        problem = f"no department {department!r} in {registry_file}"
    if problem is None and dept is not None:
        for area in areas:  # each inside one of the department's units
            if area not in registry.areas:
                problem = f"no area {area} in {registry_file}"
            elif not {a.id for a in registry.path_of(area).areas} & set(dept.areas):
                problem = f"{area} is not in {department}'s areas ({', '.join(dept.areas)})"
    if problem is not None:
        print(f"citysense tokens add: {problem}", file=sys.stderr)
        return 2
    try:
        token, principal = store.add(args.name, Role.DEPARTMENT, areas)
    except ValueError as e:
        print(f"citysense tokens add: {e}", file=sys.stderr)
        return 2
    print(token)
    scope = ", ".join(sorted(principal.areas)) or "all its areas"
    print(
        f"created {principal.token_id} for department {department} ({scope}) in {store.where}; "
        f"it reads what {settings.sharing} shares with {department}, every read audited; the "
        "token above is shown only now, only its hash is kept",
        file=sys.stderr,
    )
    return 0


def cmd_broker_config(args: argparse.Namespace) -> int:
    """Write the broker's password file, ACL, listeners and local TLS files into --out."""
    from devices.credentials import (
        DEV_SECRET_ENV,
        LOCAL_EXAMPLE_DEV_SECRET,
        LOCAL_EXAMPLE_INGEST_PASSWORD,
    )
    from ingest.ops.brokerconfig import BrokerConfigError, write_broker_files
    from ingest.ops.processes import MissingBinaryError
    from ingest.ops.tls import TlsError
    from ingest.people import WorkersError, load_workers

    settings = checked_settings("broker-config")
    registry = registry_at(args.registry or settings.registry)
    try:
        workers = load_workers(args.workers or settings.workers, registry)
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
    if settings.broker == "nats":
        return _nats_users(args.out, registry, workers, settings)
    try:
        files = write_broker_files(
            args.out,
            registry,
            workers,
            dev_secret=dev_secret,
            ingest_password=password,
            ingest_user=settings.mqtt_username,
            port=args.port or settings.mqtt_port,
            tls_port=args.tls_port or settings.mqtt_tls_port,
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


def _nats_users(
    out: Path, registry: Registry, workers: Sequence[Person], settings: Settings
) -> int:
    """``broker-config`` for a NATS cluster: the nodes' ``users.conf`` (ingest/ops/nats.py)."""
    from ingest.ops import nats
    from ingest.ops.brokerconfig import BrokerConfigError

    try:
        text = nats.users_conf(
            registry,
            workers,
            dev_secret=settings.dev_secret.get_secret_value(),
            ingest_user=settings.mqtt_username,
            ingest_password=settings.mqtt_password.get_secret_value(),
            partitions=settings.partitions,
        )
        nats.write_users(out / "users.conf", text)
    except (BrokerConfigError, OSError) as e:
        print(f"citysense broker-config: {e}", file=sys.stderr)
        return 1
    users = len(registry.devices) + len(workers) + 1
    print(
        f"wrote {out / 'users.conf'} ({users} users, {settings.partitions} partitions); "
        "each node's config includes it (ingest/ops/nats.py)"
    )
    return 0
