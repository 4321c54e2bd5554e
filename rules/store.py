"""Where alerts, their history and the rule engine's snapshot are kept.

SQLAlchemy Core with portable types only, so the same code runs on the embedded SQLite file
(the default) and on PostgreSQL by URL. Synchronous and thread-safe: the service calls it
through ``asyncio.to_thread``, the CLI directly. Every public method is one transaction; the
lifecycle methods (``open_or_repeat``, ``resolve_auto``, ``acknowledge``, ``resolve``,
``escalate``) read the alert and write it back in the same transaction, with the row locked
(``SELECT ... FOR UPDATE`` on PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite), so two writers (the
service escalating, a worker acknowledging from the CLI) never overwrite each other.
``apply_many`` applies a batch of engine transitions in one transaction, as ``apply`` would
one after the other.

Invariant held by the database itself: at most one alert not resolved per (rule, device), by a
partial unique index on SQLite and PostgreSQL, and checked in ``open_or_repeat`` everywhere.

SQLite runs in WAL mode so readers (the CLI, the API) never wait for the writer, with a busy
timeout so two writers queue instead of failing.
"""

from __future__ import annotations

import builtins
import json
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    ColumnElement,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    bindparam,
    create_engine,
    event,
    func,
    or_,
    select,
)
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.pool import StaticPool

from devices.kinds import Kind, Level
from rules.alerts import (
    AUTO,
    Alert,
    AlertAction,
    AlertEvent,
    AlertState,
    acknowledge,
    escalate,
    mark_flapping,
    open_alert,
    repeat,
    resolve,
)
from rules.model import Severity
from rules.transition import Reason, Transition

__all__ = ["AlertNotFound", "AlertStore", "NamedState", "StoreTransition", "sqlite_url"]

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
_UNRESOLVED = alerts.c.state != AlertState.RESOLVED.value
Index(
    "alerts_one_unresolved",
    alerts.c.rule_id,
    alerts.c.device_id,
    unique=True,
    sqlite_where=_UNRESOLVED,
    postgresql_where=_UNRESOLVED,
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
# change's own transaction and deleted once the broker has acknowledged each (ingest/outbox.py).
announcements = Table(
    "announcements",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),  # sending order
    Column("topic", String(255), nullable=False),
    Column("payload", LargeBinary, nullable=False),
    Column("created_ms", BigInteger, nullable=False),
)

# Given the changes a transaction made, the (topic, payload) messages to send for them.
Announce = Callable[[Sequence[tuple[Alert, AlertEvent]]], Sequence[tuple[str, bytes]]]

_AREA_COLUMNS = ("grid", "village", "township", "county", "city")
_WRITE = "citysense_write"  # execution option: this transaction writes (BEGIN IMMEDIATE)
_BUSY_TIMEOUT_MS = 10_000
_T = TypeVar("_T")


# Statements of the write path, built once with their values as parameters: building a new
# construct per call (``.values(**row)``, ``column == value``) and its cache key cost SQLAlchemy
# more than SQLite's own work on one row.
_NOT_RESOLVED = select(alerts.c.body).where(
    alerts.c.rule_id == bindparam("rule_id"),
    alerts.c.device_id == bindparam("device_id"),
    _UNRESOLVED,
)
_NOT_RESOLVED_LOCKED = _NOT_RESOLVED.with_for_update()
# A batch reads its alerts one query per rule, not per (rule, device): still a search of the
# unique index per pair on SQLite (``(rule_id, device_id) IN (VALUES ...)`` scans it instead).
_NOT_RESOLVED_OF_DEVICES = (
    select(alerts.c.body)
    .where(
        alerts.c.rule_id == bindparam("rule_id"),
        alerts.c.device_id.in_(bindparam("device_ids", expanding=True)),
        _UNRESOLVED,
    )
    .with_for_update()
)
_DEVICES_PER_QUERY = 500  # well under any driver's limit on parameters
_LOCKED = select(alerts.c.body).where(alerts.c.id == bindparam("alert_id")).with_for_update()
_INSERT_ALERT = alerts.insert()  # the columns are the keys of ``_row``
_UPDATE_ALERT = alerts.update().where(alerts.c.id == bindparam("alert_id"))  # SET: the keys
_INSERT_EVENT = alert_events.insert()


class AlertNotFound(LookupError):
    """No alert with that id (the API answers 404)."""


@dataclass(frozen=True, slots=True)
class NamedState:
    """JSON state to save under ``key`` with a batch (``AlertStore.apply_many``)."""

    key: str
    value: dict[str, Any]
    at_ms: int


@dataclass(frozen=True, slots=True)
class StoreTransition:
    """One engine transition and what ``AlertStore.apply_many`` needs to store it.

    The same as the arguments of ``AlertStore.apply``: ``severity`` (the rule's), ``kind`` and
    ``areas`` (the device's) for an alert it opens, ``now_ms`` the wall clock it is raised at.
    """

    transition: Transition
    severity: Severity
    kind: Kind
    areas: dict[Level, str]
    now_ms: int


ALERTS_FILE = "alerts.sqlite3"


def sqlite_url(data_dir: Path) -> str:
    """The default store: a SQLite file in the data directory."""
    return f"sqlite:///{data_dir / ALERTS_FILE}"


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


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


def _values(*items: Any) -> builtins.list[str]:
    """Enum members or strings, one or a collection of them, as stored strings."""
    out: builtins.list[str] = []
    for item in items:
        if item is None:
            continue
        if isinstance(item, str):  # a StrEnum member is a str whose str() is its value
            out.append(str(item))
        else:
            out.extend(_values(*item))
    return out


class AlertStore:
    """Alerts, their history, and named JSON state (the engine snapshot), in one database.

    ``url`` is any SQLAlchemy URL: ``sqlite_url(data_dir)`` by default,
    ``postgresql+psycopg://...`` for PostgreSQL (with its driver installed). Tables are created
    if missing.
    """

    def __init__(self, url: str) -> None:
        parsed = make_url(url)
        options: dict[str, Any] = {}
        if parsed.get_backend_name() == "sqlite":
            database = parsed.database or ""
            if database in ("", ":memory:"):
                # One shared connection, so every thread sees the same in-memory database.
                options = {"poolclass": StaticPool, "connect_args": {"check_same_thread": False}}
            elif not database.startswith("file:"):
                Path(database).parent.mkdir(parents=True, exist_ok=True)
        self._engine: Engine = create_engine(url, **options)
        if self._engine.dialect.name == "sqlite":
            event.listen(self._engine, "connect", _sqlite_connect)
            event.listen(self._engine, "begin", _sqlite_begin)
        self._writer: Engine = self._engine.execution_options(**{_WRITE: True})
        with self._writer.begin() as conn:  # serialised, so two processes may start together
            metadata.create_all(conn)

    @property
    def dialect(self) -> str:
        """The database's dialect name (``sqlite``, ``postgresql``)."""
        return str(self._engine.dialect.name)

    def close(self) -> None:
        """Release connections."""
        self._engine.dispose()

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with self._writer.begin() as conn:
            yield conn

    @contextmanager
    def _transaction(self) -> Iterator[_Tx]:
        """One write transaction; what the work in it wrote is stored when the work is done."""
        with self._write() as conn:
            tx = _Tx(conn)
            yield tx
            tx.flush()

    def _retrying(self, work: Callable[[_Tx], _T]) -> _T:
        """``work`` in one write transaction, and in a second one if an insert was refused."""
        try:
            with self._transaction() as tx:
                return work(tx)
        except IntegrityError:
            # Another writer opened the alert between our read and our insert (PostgreSQL, read
            # committed): the partial unique index refused ours; now it is a repeat.
            with self._transaction() as tx:
                return work(tx)

    # -- the lifecycle, one transaction each ----------------------------------------------------

    def open_or_repeat(
        self,
        *,
        rule_id: str,
        device_id: str,
        severity: Severity,
        kind: Kind,
        areas: dict[Level, str],
        ts_ms: int,
        value: float | str | None,
        detail: str,
        flapping: bool = False,
        now_ms: int | None = None,
    ) -> tuple[Alert, AlertEvent, bool]:
        """The condition of (rule, device) holds: open an alert, or update the one not resolved.

        ``ts_ms`` is device time; ``now_ms`` the wall clock (default: now) a new alert's
        escalation counts from.

        Returns the alert, its new history row and whether it was created. With ``flapping``
        (a transition whose reason is ``flapping``: a clear held back) an existing alert is
        marked flapping instead of counted as a repeat.
        """
        return self._retrying(
            lambda tx: tx.open_or_repeat(
                rule_id=rule_id,
                device_id=device_id,
                severity=severity,
                kind=kind,
                areas=areas,
                ts_ms=ts_ms,
                value=value,
                detail=detail,
                flapping=flapping,
                now_ms=now_ms,
            )
        )

    def resolve_auto(
        self,
        rule_id: str,
        device_id: str,
        at_ms: int,
        detail: str,
        announce: Announce | None = None,
    ) -> tuple[Alert, AlertEvent] | None:
        """The rule's clear condition holds: resolve the alert as ``auto``; None if none is open."""
        with self._transaction() as tx:
            done = tx.resolve_auto(rule_id, device_id, at_ms, detail)
            if done is not None and announce is not None:
                _put_announcements(tx.conn, announce([done]))
            return done

    def last_event_seq(self) -> int:
        """The newest history row's sequence number (0 when there is none)."""
        with self._engine.connect() as conn:
            return int(conn.execute(select(func.max(alert_events.c.seq))).scalar_one() or 0)

    def resolved_by_people(
        self, after_seq: int, limit: int = 1000
    ) -> tuple[int, builtins.list[tuple[str, str, int]]]:
        """Resolves by a person (not ``auto``) recorded after history row ``after_seq``, by any
        process (the API, the CLI): the newest row looked at, and each (rule id, device id,
        the alert's opening time), oldest first. For the engine to forget those conditions.

        One read transaction, so every row up to the newest it returns was visible to it: the
        next call, from there, misses none. Filtered in SQL, so thousands of other history rows
        a second (repeats) cost a range scan, not a page each.
        """
        action = alert_events.c.body["action"].as_string()
        actor = alert_events.c.body["actor"].as_string()
        with self._engine.connect() as conn, conn.begin():
            newest = conn.execute(select(func.max(alert_events.c.seq))).scalar_one()
            if newest is None or int(newest) <= after_seq:
                return after_seq, []
            rows = conn.execute(
                select(alert_events.c.seq, alerts.c.rule_id, alerts.c.device_id, alerts.c.opened_ms)
                .join(alerts, alerts.c.id == alert_events.c.alert_id)
                .where(
                    alert_events.c.seq > after_seq,
                    alert_events.c.seq <= int(newest),
                    action == AlertAction.RESOLVED.value,
                    or_(actor.is_(None), actor != AUTO),
                )
                .order_by(alert_events.c.seq)
                .limit(limit)
            ).all()
        last = int(rows[-1][0]) if len(rows) == limit else int(newest)
        return last, [(str(r), str(d), int(o)) for _, r, d, o in rows]

    def apply(
        self,
        transition: Transition,
        *,
        severity: Severity,
        kind: Kind,
        areas: dict[Level, str],
        now_ms: int | None = None,
    ) -> tuple[Alert, AlertEvent, bool] | None:
        """One engine transition: ``open``/``update`` → ``open_or_repeat``, ``clear`` →
        ``resolve_auto``. None when a clear finds nothing open; ``created`` is False on a clear.
        """
        return self._retrying(
            lambda tx: tx.apply(
                transition, severity=severity, kind=kind, areas=areas, now_ms=now_ms
            )
        )

    def apply_many(
        self,
        items: Sequence[StoreTransition],
        *,
        state: NamedState | None = None,
        announce: Announce | None = None,
    ) -> builtins.list[tuple[Alert, AlertEvent, bool] | None]:
        """Engine transitions in one transaction, in order: what ``apply`` on each in turn gives.

        A later item sees what an earlier one did (an open then a clear of the same rule and
        device resolves the alert just opened). All or nothing: on an error nothing is stored.
        Much cheaper per transition than ``apply`` (one commit, statements reused).

        ``state`` (the engine's snapshot after these transitions) is saved in the same
        transaction, so the alerts and the state that produced them never disagree after a crash.
        """
        if not items:
            if state is not None:
                self.save_state(state.key, state.value, state.at_ms)
            return []
        try:
            with self._transaction() as tx:
                tx.read_not_resolved((i.transition.rule_id, i.transition.device_id) for i in items)
                done = [tx.apply_item(item) for item in items]
                if state is not None:
                    _put_state(tx.conn, state.key, state.value, state.at_ms)
                if announce is not None:
                    changes = [(alert, event) for alert, event, _ in filter(None, done)]
                    _put_announcements(tx.conn, announce(changes))
                return done
        except IntegrityError:
            # Another writer opened an alert of one of the batch's (rule, device) between our
            # read and our insert (PostgreSQL): the whole batch was rolled back. Redo it one item
            # per transaction, each retried once as ``apply`` does; the state after the last
            # (a crash in between leaves the store ahead of the state: a replayed open is then a
            # repeat, a replayed clear a no-op).
            out = [self._retrying(partial(_Tx.apply_item, item=item)) for item in items]
            if state is not None:
                self.save_state(state.key, state.value, state.at_ms)
            if announce is not None:
                self.queue_announcements(
                    announce([(alert, event) for alert, event, _ in filter(None, out)])
                )
            return out

    def acknowledge(
        self,
        alert_id: str,
        actor: str,
        at_ms: int,
        note: str | None = None,
        announce: Announce | None = None,
    ) -> tuple[Alert, AlertEvent]:
        """Someone took it on. AlertNotFound, or InvalidTransition if resolved or acknowledged."""
        with self._transaction() as tx:
            alert, change = acknowledge(tx.locked(alert_id), actor, at_ms, note)
            tx.update(alert, change)
            if announce is not None:
                _put_announcements(tx.conn, announce([(alert, change)]))
            return alert, change

    def resolve(
        self,
        alert_id: str,
        actor: str,
        at_ms: int,
        note: str | None = None,
        announce: Announce | None = None,
    ) -> tuple[Alert, AlertEvent]:
        """Closed by ``actor``. AlertNotFound, or InvalidTransition if already resolved."""
        with self._transaction() as tx:
            alert, change = resolve(tx.locked(alert_id), actor, at_ms, note)
            tx.update(alert, change)
            if announce is not None:
                _put_announcements(tx.conn, announce([(alert, change)]))
            return alert, change

    def escalate(
        self, alert_id: str, at_ms: int, announce: Announce | None = None
    ) -> tuple[Alert, AlertEvent]:
        """Up one level. AlertNotFound, or InvalidTransition if not open or at the top."""
        with self._transaction() as tx:
            alert, change = escalate(tx.locked(alert_id), at_ms)
            tx.update(alert, change)
            if announce is not None:
                _put_announcements(tx.conn, announce([(alert, change)]))
            return alert, change

    # -- the outbox of announcements ---------------------------------------------------------

    def queue_announcements(self, rows: Sequence[tuple[str, bytes]]) -> None:
        """Messages to send, in their own transaction (for a change already committed)."""
        if rows:
            with self._transaction() as tx:
                _put_announcements(tx.conn, rows)

    def pending_announcements(self, limit: int = 500) -> builtins.list[tuple[int, str, bytes]]:
        """The oldest messages not yet acknowledged by the broker: (id, topic, payload)."""
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(announcements.c.id, announcements.c.topic, announcements.c.payload)
                .order_by(announcements.c.id)
                .limit(limit)
            ).all()
        return [(int(r[0]), str(r[1]), bytes(r[2])) for r in rows]

    def sent_announcements(self, ids: Sequence[int]) -> None:
        """The broker has these: forget them."""
        if ids:
            with self._transaction() as tx:
                tx.conn.execute(announcements.delete().where(announcements.c.id.in_(list(ids))))

    def count_announcements(self) -> int:
        """Messages waiting for the broker."""
        with self._engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(announcements)).scalar_one())

    # -- low-level writes (the caller computed the change; no concurrency check) ---------------

    def insert(self, alert: Alert, first: AlertEvent) -> None:
        """Store a new alert; refuse a second one not resolved for the same (rule, device).

        Prefer ``open_or_repeat``, which decides and writes in one transaction.
        """
        with self._transaction() as tx:
            existing = tx.not_resolved(alert.rule_id, alert.device_id)
            if existing is not None:
                raise ValueError(
                    f"{alert.rule_id}/{alert.device_id} already has alert {existing.id}"
                )
            tx.insert(alert, first)

    def update(self, alert: Alert, change: AlertEvent) -> None:
        """Store a changed alert as given, and the history row that says why.

        Overwrites whatever is stored: a change computed from an alert read earlier can undo a
        concurrent acknowledgement. Prefer the lifecycle methods, which read and write at once.
        """
        with self._transaction() as tx:
            tx.locked(alert.id)  # AlertNotFound if there is none
            tx.update(alert, change)

    def not_resolved(self, rule_id: str, device_id: str) -> Alert | None:
        """The one alert of (rule, device) that is open or acknowledged, if any."""
        with self._engine.connect() as conn:
            body = conn.execute(
                _NOT_RESOLVED, {"rule_id": rule_id, "device_id": device_id}
            ).scalar_one_or_none()
        return Alert.model_validate(body) if body is not None else None

    # -- reads ----------------------------------------------------------------------------------

    def get(self, alert_id: str) -> Alert | None:
        """One alert by id."""
        with self._engine.connect() as conn:
            body = conn.execute(
                select(alerts.c.body).where(alerts.c.id == alert_id)
            ).scalar_one_or_none()
        return Alert.model_validate(body) if body is not None else None

    def history(self, alert_id: str) -> builtins.list[AlertEvent]:
        """What happened to an alert, oldest first (in the order it was recorded)."""
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(alert_events.c.body)
                .where(alert_events.c.alert_id == alert_id)
                .order_by(alert_events.c.seq)
            ).scalars()
            return [AlertEvent.model_validate(b) for b in rows]

    def open_alerts(self) -> builtins.list[Alert]:
        """Every alert not resolved (open or acknowledged), oldest first, without a limit."""
        query = select(alerts.c.body).where(_UNRESOLVED).order_by(alerts.c.opened_ms, alerts.c.id)
        with self._engine.connect() as conn:
            return [Alert.model_validate(b) for b in conn.execute(query).scalars()]

    def count_by_state(self) -> dict[str, int]:
        """How many alerts are in each state (every state present, zeros included)."""
        counts = {state.value: 0 for state in AlertState}
        with self._engine.connect() as conn:
            rows = conn.execute(select(alerts.c.state, func.count()).group_by(alerts.c.state))
            counts.update({str(state): int(n) for state, n in rows})
        return counts

    def list(
        self,
        *,
        state: AlertState | Collection[AlertState] | None = None,
        severity: Severity | Collection[Severity] | None = None,
        area_id: str | None = None,
        rule_id: str | None = None,
        device_id: str | None = None,
        since_ms: int | None = None,
        until_ms: int | None = None,
        limit: int = 100,
        states: Collection[AlertState] = (),
    ) -> builtins.list[Alert]:
        """Alerts newest first (by opening time), every filter optional and combined with AND.

        ``state``/``severity``: one value or several; ``area_id`` matches the alert's area at
        any level (grid, village, township, county, city); ``since_ms`` (inclusive) and
        ``until_ms`` (exclusive) bound the opening time. ``states`` is an older spelling of
        ``state`` with several values.
        """
        conditions: builtins.list[ColumnElement[bool]] = []
        wanted_states = _values(state, states)
        if wanted_states:
            conditions.append(alerts.c.state.in_(wanted_states))
        wanted_severities = _values(severity)
        if wanted_severities:
            conditions.append(alerts.c.severity.in_(wanted_severities))
        if area_id is not None:
            conditions.append(or_(*(alerts.c[c] == area_id for c in _AREA_COLUMNS)))
        if rule_id is not None:
            conditions.append(alerts.c.rule_id == rule_id)
        if device_id is not None:
            conditions.append(alerts.c.device_id == device_id)
        if since_ms is not None:
            conditions.append(alerts.c.opened_ms >= since_ms)
        if until_ms is not None:
            conditions.append(alerts.c.opened_ms < until_ms)
        query = (
            select(alerts.c.body)
            .where(*conditions)
            .order_by(alerts.c.opened_ms.desc(), alerts.c.id.desc())
            .limit(max(0, limit))
        )
        with self._engine.connect() as conn:
            return [Alert.model_validate(b) for b in conn.execute(query).scalars()]

    # -- named state (the engine snapshot) ------------------------------------------------------

    def save_state(self, key: str, value: dict[str, Any], at_ms: int | None = None) -> None:
        """Replace the JSON stored under ``key`` (``at_ms`` defaults to now)."""
        with self._write() as conn:
            _put_state(conn, key, value, at_ms)

    def load_state(self, key: str) -> dict[str, Any] | None:
        """The JSON stored under ``key``, if any."""
        with self._engine.connect() as conn:
            text = conn.execute(
                select(engine_state.c.value).where(engine_state.c.key == key)
            ).scalar_one_or_none()
        if text is None:
            return None
        loaded = json.loads(text)
        if not isinstance(loaded, dict):
            raise ValueError(f"state {key!r} is not a JSON object")
        return loaded


def _put_announcements(conn: Connection, rows: Sequence[tuple[str, bytes]]) -> None:
    if rows:
        stamp = _now_ms()
        conn.execute(
            announcements.insert(),
            [{"topic": t, "payload": p, "created_ms": stamp} for t, p in rows],
        )


def _put_state(conn: Connection, key: str, value: dict[str, Any], at_ms: int | None) -> None:
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    stamp = _now_ms() if at_ms is None else at_ms
    done = conn.execute(
        engine_state.update().where(engine_state.c.key == key).values(value=text, updated_ms=stamp)
    )
    if done.rowcount == 0:
        conn.execute(engine_state.insert().values(key=key, value=text, updated_ms=stamp))


class _Tx:
    """Inside one write transaction: the lifecycle of engine transitions, and the rows.

    Remembers the alert not resolved of each (rule, device) it has read or written, so a later
    item of a batch finds what an earlier one did without reading and validating it again.
    Nothing else changes those meanwhile: on SQLite ``BEGIN IMMEDIATE`` holds the write lock; on
    PostgreSQL a row read is locked ``FOR UPDATE``, and an alert another writer opens meanwhile
    makes our insert fail with IntegrityError, as it would without the memory.

    Writes are kept and made at the end (``flush``), each table in one ``executemany``, an alert
    changed several times written once as it ends: one statement per row costs SQLAlchemy more
    than SQLite's work on the row. Nothing reads them back inside the transaction: alerts are
    found through the memory above, or by id (``locked``) before anything is written.
    """

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._unresolved: dict[tuple[str, str], Alert | None] = {}
        self._opened: dict[str, Alert] = {}  # alerts new in this transaction, by id, as now
        self._changed: dict[str, Alert] = {}  # alerts read locked and changed, by id, as now
        self._events: builtins.list[dict[str, Any]] = []

    # -- engine transitions -----------------------------------------------------------------

    def apply_item(self, item: StoreTransition) -> tuple[Alert, AlertEvent, bool] | None:
        return self.apply(
            item.transition,
            severity=item.severity,
            kind=item.kind,
            areas=item.areas,
            now_ms=item.now_ms,
        )

    def apply(
        self,
        t: Transition,
        *,
        severity: Severity,
        kind: Kind,
        areas: dict[Level, str],
        now_ms: int | None,
    ) -> tuple[Alert, AlertEvent, bool] | None:
        if t.action == "clear":
            done = self.resolve_auto(t.rule_id, t.device_id, t.ts_ms, t.detail)
            return None if done is None else (*done, False)
        return self.open_or_repeat(
            rule_id=t.rule_id,
            device_id=t.device_id,
            severity=severity,
            kind=kind,
            areas=areas,
            ts_ms=t.ts_ms,
            value=t.value,
            detail=t.detail,
            flapping=t.reason is Reason.FLAPPING,
            now_ms=now_ms,
        )

    def open_or_repeat(
        self,
        *,
        rule_id: str,
        device_id: str,
        severity: Severity,
        kind: Kind,
        areas: dict[Level, str],
        ts_ms: int,
        value: float | str | None,
        detail: str,
        flapping: bool,
        now_ms: int | None,
    ) -> tuple[Alert, AlertEvent, bool]:
        existing = self.not_resolved(rule_id, device_id)
        if existing is None:
            alert, change = open_alert(
                rule_id=rule_id,
                severity=severity,
                device_id=device_id,
                kind=kind,
                areas=areas,
                at_ms=ts_ms,
                value=value,
                detail=detail,
                flapping=flapping,
                raised_ms=_now_ms() if now_ms is None else now_ms,
            )
            self.insert(alert, change)
            return alert, change, True
        if flapping:
            alert, change = mark_flapping(existing, ts_ms, detail)
        else:
            alert, change = repeat(existing, ts_ms, value, detail)
        self.update(alert, change)
        return alert, change, False

    def resolve_auto(
        self, rule_id: str, device_id: str, at_ms: int, detail: str
    ) -> tuple[Alert, AlertEvent] | None:
        existing = self.not_resolved(rule_id, device_id)
        if existing is None:
            return None
        alert, change = resolve(existing, AUTO, at_ms, detail or None)
        self.update(alert, change)
        return alert, change

    # -- rows -------------------------------------------------------------------------------

    def not_resolved(self, rule_id: str, device_id: str) -> Alert | None:
        """The alert not resolved of (rule, device), locked."""
        key = (rule_id, device_id)
        if key not in self._unresolved:
            body = self.conn.execute(
                _NOT_RESOLVED_LOCKED, {"rule_id": rule_id, "device_id": device_id}
            ).scalar_one_or_none()
            self._unresolved[key] = Alert.model_validate(body) if body is not None else None
        return self._unresolved[key]

    def read_not_resolved(self, pairs: Iterable[tuple[str, str]]) -> None:
        """Read (locked) the alerts not resolved of many (rule, device) at once, as
        ``not_resolved`` would one at a time: one query per rule instead of one per pair."""
        device_ids: dict[str, builtins.list[str]] = {}
        for rule_id, device_id in pairs:
            if (rule_id, device_id) not in self._unresolved:
                self._unresolved[rule_id, device_id] = None  # unless found below
                device_ids.setdefault(rule_id, []).append(device_id)
        for rule_id, ids in device_ids.items():
            for start in range(0, len(ids), _DEVICES_PER_QUERY):
                chunk = ids[start : start + _DEVICES_PER_QUERY]
                query = {"rule_id": rule_id, "device_ids": chunk}
                for body in self.conn.execute(_NOT_RESOLVED_OF_DEVICES, query).scalars():
                    alert = Alert.model_validate(body)
                    self._unresolved[alert.rule_id, alert.device_id] = alert

    def locked(self, alert_id: str) -> Alert:
        body = self.conn.execute(_LOCKED, {"alert_id": alert_id}).scalar_one_or_none()
        if body is None:
            raise AlertNotFound(f"no alert {alert_id!r}")
        return Alert.model_validate(body)

    def insert(self, alert: Alert, first: AlertEvent) -> None:
        self._opened[alert.id] = alert
        self._remember(alert)
        self._record(first)

    def update(self, alert: Alert, change: AlertEvent) -> None:
        """A change to an alert read (locked) or inserted in this transaction, so it exists."""
        if alert.id in self._opened:
            self._opened[alert.id] = alert
        else:
            self._changed[alert.id] = alert
        self._remember(alert)
        self._record(change)

    def flush(self) -> None:
        """Write what the transaction did. Alerts changed first: one resolved here frees its
        (rule, device) for an alert opened after it, which the unique index would refuse before.
        """
        if self._changed:
            rows = [_row(a) for a in self._changed.values()]
            for row in rows:
                row["alert_id"] = row.pop("id")  # the WHERE; "id" would be a SET
            self.conn.execute(_UPDATE_ALERT, rows)
        if self._opened:
            self.conn.execute(_INSERT_ALERT, [_row(a) for a in self._opened.values()])
        if self._events:
            self.conn.execute(_INSERT_EVENT, self._events)
        self._changed, self._opened, self._events = {}, {}, []

    def _record(self, change: AlertEvent) -> None:
        self._events.append(
            {
                "alert_id": change.alert_id,
                "at_ms": change.at_ms,
                "body": change.model_dump(mode="json"),
            }
        )

    def _remember(self, alert: Alert) -> None:
        key = (alert.rule_id, alert.device_id)
        if alert.state is not AlertState.RESOLVED:
            self._unresolved[key] = alert
        elif (known := self._unresolved.get(key)) is not None and known.id == alert.id:
            self._unresolved[key] = None  # else: an older alert, or a pair not read yet


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # SQLAlchemy, not the sqlite3 module, starts transactions (see _sqlite_begin).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    # WAL: the CLI and the API read while the service writes; a busy writer is waited for.
    cursor.execute("PRAGMA journal_mode=WAL")
    # FULL: a PUBACK follows the commit, and the engine's state is in the same commit; with
    # NORMAL a power cut may roll back the last commits after their messages were acknowledged.
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
    cursor.close()


def _sqlite_begin(conn: Connection) -> None:
    # A writing transaction takes the write lock at BEGIN, so its reads cannot go stale before
    # its writes (a deferred transaction that upgrades fails at once with SQLITE_BUSY in WAL).
    if conn.get_execution_options().get(_WRITE):
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    else:
        conn.exec_driver_sql("BEGIN")
