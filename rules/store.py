"""Where alerts, their history and the rule engine's snapshot are kept.

SQLAlchemy Core with portable types only, so the same code runs on the embedded SQLite file
(the default) and on PostgreSQL by URL. Synchronous: the service calls it through
``asyncio.to_thread``; every method is one transaction.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    func,
    or_,
    select,
)
from sqlalchemy.engine import Connection, Engine

from rules.alerts import Alert, AlertEvent, AlertState

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
)

# The database holds the rule too: at most one alert not resolved per (rule, device), even if
# two writers race (a partial unique index, on both SQLite and PostgreSQL).
_UNRESOLVED = alerts.c.state != AlertState.RESOLVED.value
Index(
    "alerts_one_unresolved",
    alerts.c.rule_id,
    alerts.c.device_id,
    unique=True,
    sqlite_where=_UNRESOLVED,
    postgresql_where=_UNRESOLVED,
)

alert_events = Table(
    "alert_events",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("alert_id", String(32), nullable=False, index=True),
    Column("at_ms", BigInteger, nullable=False),
    Column("body", JSON, nullable=False),
)

engine_state = Table(
    "engine_state",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
    Column("updated_ms", BigInteger, nullable=False),
)

_AREA_COLUMNS = ("grid", "village", "township", "county", "city")


def sqlite_url(data_dir: Path) -> str:
    """The default store: a SQLite file in the data directory."""
    return f"sqlite:///{data_dir / 'alerts.sqlite3'}"


def _row(alert: Alert) -> dict[str, Any]:
    areas = {level.value: area for level, area in alert.areas.items()}
    return {
        "id": alert.id,
        "rule_id": alert.rule_id,
        "device_id": alert.device_id,
        "state": alert.state.value,
        "severity": alert.severity.value,
        **{c: areas.get(c) for c in _AREA_COLUMNS},
        "opened_ms": alert.opened_ms,
        "updated_ms": alert.updated_ms,
        "body": alert.model_dump(mode="json"),
    }


class AlertStore:
    """Alerts, their history, and named JSON state, in one SQL database."""

    def __init__(self, url: str) -> None:
        self._engine: Engine = create_engine(url)
        if self._engine.dialect.name == "sqlite":
            event.listen(self._engine, "connect", _sqlite_pragmas)
        metadata.create_all(self._engine)

    def close(self) -> None:
        """Release connections."""
        self._engine.dispose()

    # -- alerts -------------------------------------------------------------------------------

    def not_resolved(self, rule_id: str, device_id: str) -> Alert | None:
        """The one alert of (rule, device) that is open or acknowledged, if any."""
        with self._engine.connect() as conn:
            return self._not_resolved(conn, rule_id, device_id)

    def _not_resolved(self, conn: Connection, rule_id: str, device_id: str) -> Alert | None:
        query = select(alerts.c.body).where(
            alerts.c.rule_id == rule_id,
            alerts.c.device_id == device_id,
            alerts.c.state != AlertState.RESOLVED.value,
        )
        body = conn.execute(query).scalar_one_or_none()
        return Alert.model_validate(body) if body is not None else None

    def insert(self, alert: Alert, first: AlertEvent) -> None:
        """Store a new alert; refuse a second one not resolved for the same (rule, device)."""
        with self._engine.begin() as conn:
            existing = self._not_resolved(conn, alert.rule_id, alert.device_id)
            if existing is not None:
                raise ValueError(
                    f"{alert.rule_id}/{alert.device_id} already has alert {existing.id}"
                )
            conn.execute(alerts.insert().values(**_row(alert)))
            self._record(conn, first)

    def update(self, alert: Alert, change: AlertEvent) -> None:
        """Store a changed alert and the history row that says why."""
        with self._engine.begin() as conn:
            values = _row(alert)
            del values["id"]
            conn.execute(alerts.update().where(alerts.c.id == alert.id).values(**values))
            self._record(conn, change)

    @staticmethod
    def _record(conn: Connection, change: AlertEvent) -> None:
        conn.execute(
            alert_events.insert().values(
                alert_id=change.alert_id, at_ms=change.at_ms, body=change.model_dump(mode="json")
            )
        )

    def get(self, alert_id: str) -> Alert | None:
        """One alert by id."""
        with self._engine.connect() as conn:
            body = conn.execute(
                select(alerts.c.body).where(alerts.c.id == alert_id)
            ).scalar_one_or_none()
        return Alert.model_validate(body) if body is not None else None

    def history(self, alert_id: str) -> list[AlertEvent]:
        """What happened to an alert, oldest first."""
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(alert_events.c.body)
                .where(alert_events.c.alert_id == alert_id)
                .order_by(alert_events.c.seq)
            ).scalars()
            return [AlertEvent.model_validate(b) for b in rows]

    def list(
        self,
        *,
        states: Sequence[AlertState] = (),
        area_id: str | None = None,
        rule_id: str | None = None,
        since_ms: int | None = None,
        limit: int = 100,
    ) -> list[Alert]:
        """Newest first, filtered; ``area_id`` matches at any level of the alert's path."""
        query = select(alerts.c.body).order_by(alerts.c.opened_ms.desc()).limit(limit)
        if states:
            query = query.where(alerts.c.state.in_([s.value for s in states]))
        if area_id is not None:
            query = query.where(or_(*(alerts.c[c] == area_id for c in _AREA_COLUMNS)))
        if rule_id is not None:
            query = query.where(alerts.c.rule_id == rule_id)
        if since_ms is not None:
            query = query.where(alerts.c.updated_ms >= since_ms)
        with self._engine.connect() as conn:
            return [Alert.model_validate(b) for b in conn.execute(query).scalars()]

    def count_by_state(self) -> dict[str, int]:
        """How many alerts are in each state."""
        with self._engine.connect() as conn:
            rows = conn.execute(select(alerts.c.state, func.count()).group_by(alerts.c.state))
            return {str(state): int(n) for state, n in rows}

    # -- named state (the engine snapshot) ------------------------------------------------------

    def save_state(self, key: str, value: dict[str, Any], at_ms: int) -> None:
        """Replace the JSON stored under ``key``."""
        with self._engine.begin() as conn:
            conn.execute(engine_state.delete().where(engine_state.c.key == key))
            conn.execute(
                engine_state.insert().values(key=key, value=json.dumps(value), updated_ms=at_ms)
            )

    def load_state(self, key: str) -> dict[str, Any] | None:
        """The JSON stored under ``key``, if any."""
        with self._engine.connect() as conn:
            text = conn.execute(
                select(engine_state.c.value).where(engine_state.c.key == key)
            ).scalar_one_or_none()
        loaded: dict[str, Any] | None = json.loads(text) if text is not None else None
        return loaded


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL: the CLI and the API read while the service writes.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()
