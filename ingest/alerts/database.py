"""The alert store's database: its tables, the statements of the write path, SQLite's settings.

Portable types only, so the same schema runs on the embedded SQLite file and on PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from weakref import WeakKeyDictionary

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    bindparam,
    inspect,
    select,
)
from sqlalchemy.engine import Connection, Engine

from rules.alerts import Alert, AlertState

metadata = MetaData()

alerts = Table(
    "alerts",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("rule_id", String(64), nullable=False),
    Column("device_id", String(64), nullable=False),
    Column("state", String(16), nullable=False),
    Column("severity", String(16), nullable=False),
    Column("grid", String(64)),
    Column("village", String(64)),
    Column("township", String(64)),
    Column("county", String(64)),
    Column("city", String(64)),
    Column("opened_ms", BigInteger, nullable=False),
    Column("updated_ms", BigInteger, nullable=False),
    Column("body", JSON, nullable=False),  # the whole Alert, so new fields need no migration
    Index("alerts_rule_device_state", "rule_id", "device_id", "state"),
    Index("alerts_grid", "grid"),
    Index("alerts_village", "village"),
    Index("alerts_township", "township"),
    Index("alerts_county", "county"),
    Index("alerts_opened", "opened_ms"),
)

# The database holds the rule too: at most one alert not resolved per (rule, device), even if
# two writers race. Only where partial indexes exist: elsewhere a plain unique index on
# (rule, device) would forbid the second alert after a resolved one, so there the check in
# ``open_or_repeat`` is the guard.
UNRESOLVED = alerts.c.state != AlertState.RESOLVED.value
Index(
    "alerts_one_unresolved",
    alerts.c.rule_id,
    alerts.c.device_id,
    unique=True,
    sqlite_where=UNRESOLVED,
    postgresql_where=UNRESOLVED,
).ddl_if(dialect=("sqlite", "postgresql"))  # type: ignore[arg-type]  # a tuple works

alert_events = Table(
    "alert_events",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),  # insertion order
    Column("alert_id", String(32), nullable=False, index=True),
    Column("at_ms", BigInteger, nullable=False),
    Column("body", JSON, nullable=False),  # the whole AlertEvent
)

engine_state = Table(
    "engine_state",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),  # JSON text
    Column("updated_ms", BigInteger, nullable=False),
)

# The transactional outbox: the MQTT messages that tell people of a change, written in the
# change's own transaction and deleted once the broker has acknowledged each
# (ingest/alerts/outbox.py).
announcements = Table(
    "announcements",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),  # sending order
    Column("topic", String(255), nullable=False),
    Column("payload", LargeBinary, nullable=False),
    Column("created_ms", BigInteger, nullable=False),
)

# The channels' queue (issue 19): one job per announcement, written with it in the change's own
# transaction (``put_channel_jobs``), expanded into deliveries to people's channels and deleted
# in one transaction by ingest/delivery/ (which owns the tables of deliveries and receipts).
channel_jobs = Table(
    "channel_jobs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),  # dispatch order
    Column("topic", String(255), nullable=False),
    Column("payload", LargeBinary, nullable=False),
    Column("created_ms", BigInteger, nullable=False),
)

AREA_COLUMNS = ("grid", "village", "township", "county", "city")


# Statements of the write path, built once with their values as parameters: building a new
# construct per call (``.values(**row)``, ``column == value``) and its cache key cost SQLAlchemy
# more than SQLite's own work on one row.
NOT_RESOLVED = select(alerts.c.body).where(
    alerts.c.rule_id == bindparam("rule_id"),
    alerts.c.device_id == bindparam("device_id"),
    UNRESOLVED,
)
NOT_RESOLVED_LOCKED = NOT_RESOLVED.with_for_update()
# A batch reads its alerts one query per rule, not per (rule, device): still a search of the
# unique index per pair on SQLite (``(rule_id, device_id) IN (VALUES ...)`` scans it instead).
NOT_RESOLVED_OF_DEVICES = (
    select(alerts.c.body)
    .where(
        alerts.c.rule_id == bindparam("rule_id"),
        alerts.c.device_id.in_(bindparam("device_ids", expanding=True)),
        UNRESOLVED,
    )
    .with_for_update()
)
DEVICES_PER_QUERY = 500  # well under any driver's limit on parameters
# When the newest alert of (rule, device) was resolved by a person: None if by ``auto``.
LAST_RESOLVE = (
    select(alert_events.c.at_ms, alert_events.c.body["actor"].as_string())
    .join(alerts, alerts.c.id == alert_events.c.alert_id)
    .where(
        alerts.c.rule_id == bindparam("rule_id"),
        alerts.c.device_id == bindparam("device_id"),
        alert_events.c.body["action"].as_string() == "resolved",
    )
    .order_by(alert_events.c.seq.desc())
    .limit(1)
)
LOCKED = select(alerts.c.body).where(alerts.c.id == bindparam("alert_id")).with_for_update()
INSERT_ALERT = alerts.insert()  # the columns are the keys of ``row_of``
UPDATE_ALERT = alerts.update().where(alerts.c.id == bindparam("alert_id"))  # SET: the keys
INSERT_EVENT = alert_events.insert()


def row_of(alert: Alert) -> dict[str, Any]:
    areas = {level.value: area for level, area in alert.areas.items()}
    return {
        "id": alert.id,
        "rule_id": alert.rule_id,
        "device_id": alert.device_id,
        "state": alert.state.value,
        "severity": alert.severity.value,
        **{c: areas.get(c) for c in AREA_COLUMNS},
        "opened_ms": alert.opened_ms,
        "updated_ms": alert.updated_ms,
        "body": alert.model_dump(mode="json"),
    }


# Whether each engine's database has ``channel_jobs``: a database made by the case store alone
# (tools, tests) has only ``announcements``; looked up once per engine, not per transaction.
_HAS_JOBS: WeakKeyDictionary[Engine, bool] = WeakKeyDictionary()


def put_channel_jobs(conn: Connection, rows: Sequence[tuple[str, bytes]], stamp: int) -> None:
    """One channel job per announcement, in the announcement's transaction (issue 19)."""
    has = _HAS_JOBS.get(conn.engine)
    if has is None:
        has = _HAS_JOBS[conn.engine] = inspect(conn).has_table(channel_jobs.name)
    if has and rows:
        conn.execute(
            channel_jobs.insert(),
            [{"topic": t, "payload": p, "created_ms": stamp} for t, p in rows],
        )
