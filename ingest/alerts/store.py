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

Why one module (over 400 lines): every public method is one transaction under the same locking
discipline, which is this module's one idea; the schema (``database``) and the batched write
transaction (``transaction``) are apart.
"""

from __future__ import annotations

import builtins
import json
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import (
    ColumnElement,
    func,
    or_,
    select,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from devices.kinds import Kind, Level
from ingest.alerts.database import (
    AREA_COLUMNS,
    NOT_RESOLVED,
    UNRESOLVED,
    alert_events,
    alerts,
    announcements,
    engine_state,
    metadata,
)
from ingest.alerts.transaction import (
    AlertNotFound,
    NamedState,
    StoreTransition,
    WriteTransaction,
    put_announcements,
    put_state,
)
from ingest.transactions import WRITE, allow_idle, open_engine, serialise_writers
from rules.alerts import (
    AUTO,
    Alert,
    AlertAction,
    AlertEvent,
    AlertState,
    acknowledge,
    check_person,
    escalate,
    resolve,
)
from rules.model import Severity
from rules.transition import Transition

__all__ = ["AlertNotFound", "AlertStore", "NamedState", "StoreTransition", "sqlite_url"]

# Given the changes a transaction made, the (topic, payload) messages to send for them.
Announce = Callable[[Sequence[tuple[Alert, AlertEvent]]], Sequence[tuple[str, bytes]]]
# Runs first in a write transaction and raises to refuse it (a worker's lost lease).
Check = Callable[[Connection], None]
# Work that must commit with the alerts a batch opens, in their transaction (a case filed for
# each alert of a ``case: auto`` rule, ingest/cases/filing.py): given to the store by the
# service, so this room needs nothing of the cases'.
Opened = Callable[[Connection, Sequence[tuple[Alert, AlertEvent]]], None]

_T = TypeVar("_T")


ALERTS_FILE = "alerts.sqlite3"


def sqlite_url(data_dir: Path) -> str:
    """The default store: a SQLite file in the data directory."""
    return f"sqlite:///{data_dir / ALERTS_FILE}"


def store_url(database_url: str | None, data_dir: Path) -> str:
    """``CITYSENSE_DATABASE_URL`` if set, else the SQLite file in the data directory."""
    return database_url or sqlite_url(data_dir)


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
        self.on_opened: Opened | None = None  # see ``Opened``
        self._engine: Engine = open_engine(url)
        self._writer: Engine = self._engine.execution_options(**{WRITE: True})
        with self._writer.begin() as conn:  # serialised, so two processes may start together
            serialise_writers(conn)
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
            serialise_writers(conn)
            yield conn

    @contextmanager
    def _transaction(self) -> Iterator[WriteTransaction]:
        """One write transaction; what the work in it wrote is stored when the work is done."""
        with self._write() as conn:
            tx = WriteTransaction(conn)
            yield tx
            tx.flush()

    def _retrying(self, work: Callable[[WriteTransaction], _T]) -> _T:
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
                put_announcements(tx.conn, announce([done]))
            return done

    def last_event_seq(self) -> int:
        """The newest history row's sequence number (0 when there is none)."""
        with self._engine.connect() as conn:
            return int(conn.execute(select(func.max(alert_events.c.seq))).scalar_one() or 0)

    def resolved_by_people(
        self, after_seq: int, limit: int = 1000
    ) -> tuple[int, builtins.list[tuple[str, str, int, int, str]]]:
        """Resolves by a person (not ``auto``) recorded after history row ``after_seq``, by any
        process (the API, the CLI): the newest row looked at, and each (rule id, device id,
        the alert's opening time, the resolve's time, the alert's id), oldest first. For the
        engine to forget those conditions.

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
                select(
                    alert_events.c.seq,
                    alerts.c.rule_id,
                    alerts.c.device_id,
                    alerts.c.opened_ms,
                    alert_events.c.at_ms,
                    alerts.c.id,
                )
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
        return last, [(str(r), str(d), int(o), int(at), str(i)) for _, r, d, o, at, i in rows]

    def changes_since(
        self, after_seq: int, limit: int = 500
    ) -> tuple[int, builtins.list[tuple[Alert, AlertEvent]]]:
        """History rows recorded after ``after_seq`` by any process, oldest first, each with
        its alert as it is now; and the newest row looked at (as ``resolved_by_people``). For
        a cluster's live stream: every worker tells its listeners of every worker's changes."""
        with self._engine.connect() as conn, conn.begin():
            newest = conn.execute(select(func.max(alert_events.c.seq))).scalar_one()
            if newest is None or int(newest) <= after_seq:
                return after_seq, []
            rows = conn.execute(
                select(alert_events.c.seq, alert_events.c.body, alerts.c.body)
                .join(alerts, alerts.c.id == alert_events.c.alert_id)
                .where(alert_events.c.seq > after_seq, alert_events.c.seq <= int(newest))
                .order_by(alert_events.c.seq)
                .limit(limit)
            ).all()
        last = int(rows[-1][0]) if len(rows) == limit else int(newest)
        out = [
            (Alert.model_validate(alert), AlertEvent.model_validate(event))
            for _, event, alert in rows
        ]
        return last, out

    def last_resolved_ms(self, rule_id: str, device_id: str) -> int | None:
        """When the newest resolved alert of (rule, device) was resolved; None if none was."""
        action = alert_events.c.body["action"].as_string()
        with self._engine.connect() as conn:
            found = conn.execute(
                select(func.max(alert_events.c.at_ms))
                .join(alerts, alerts.c.id == alert_events.c.alert_id)
                .where(
                    alerts.c.rule_id == rule_id,
                    alerts.c.device_id == device_id,
                    action == AlertAction.RESOLVED.value,
                )
            ).scalar_one()
        return None if found is None else int(found)

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
        state: NamedState | Sequence[NamedState] | None = None,
        announce: Announce | None = None,
        check: Check | None = None,
    ) -> builtins.list[tuple[Alert, AlertEvent, bool] | None]:
        """Engine transitions in one transaction, in order: what ``apply`` on each in turn gives.

        A later item sees what an earlier one did (an open then a clear of the same rule and
        device resolves the alert just opened). All or nothing: on an error nothing is stored.
        Much cheaper per transition than ``apply`` (one commit, statements reused).

        ``state`` (the engine's snapshot after these transitions) is saved in the same
        transaction, so the alerts and the state that produced them never disagree after a crash
        (several states: a worker's partitions, ingest/cluster/engines.py). ``check`` runs first
        in the transaction and may raise to refuse it all (a lost lease: ``Fenced``).
        """
        states = [state] if isinstance(state, NamedState) else list(state or ())
        if not items and not states and check is None:
            return []
        try:
            return self._apply_batch(items, states, announce, check)
        except IntegrityError:
            # A writer outside the writers' turn (``serialise_writers``: an older version, a
            # hand-run statement) opened an alert of the batch between our read and our
            # insert: all was rolled back. Redo the whole batch once, in one transaction with
            # its state and its messages, which now reads that alert (issue 14 review, P5).
            return self._apply_batch(items, states, announce, check)

    def _apply_batch(
        self,
        items: Sequence[StoreTransition],
        states: Sequence[NamedState],
        announce: Announce | None,
        check: Check | None,
    ) -> builtins.list[tuple[Alert, AlertEvent, bool] | None]:
        """``apply_many``'s one transaction: the check, the items, the states, their messages."""
        with self._transaction() as tx:
            allow_idle(tx.conn, len(items))
            if check is not None:
                check(tx.conn)
            tx.read_not_resolved((i.transition.rule_id, i.transition.device_id) for i in items)
            done = [tx.apply_item(item) for item in items]
            for state in states:
                put_state(tx.conn, state.key, state.value, state.at_ms)
            opened = [(alert, event) for alert, event, new in filter(None, done) if new]
            if opened and self.on_opened is not None:
                self.on_opened(tx.conn, opened)
            if announce is not None:
                changes = [(alert, event) for alert, event, _ in filter(None, done)]
                put_announcements(tx.conn, announce(changes))
            return done

    def acknowledge(
        self,
        alert_id: str,
        actor: str,
        at_ms: int,
        note: str | None = None,
        announce: Announce | None = None,
    ) -> tuple[Alert, AlertEvent]:
        """Someone took it on. AlertNotFound, or InvalidTransition if resolved or acknowledged;
        ReservedActor if ``actor`` is the rules' own name."""
        check_person(actor)
        with self._transaction() as tx:
            alert, change = acknowledge(tx.locked(alert_id), actor, at_ms, note)
            tx.update(alert, change)
            if announce is not None:
                put_announcements(tx.conn, announce([(alert, change)]))
            return alert, change

    def resolve(
        self,
        alert_id: str,
        actor: str,
        at_ms: int,
        note: str | None = None,
        announce: Announce | None = None,
    ) -> tuple[Alert, AlertEvent]:
        """Closed by ``actor``, a person. AlertNotFound, or InvalidTransition if already
        resolved; ReservedActor if ``actor`` is the rules' own name."""
        check_person(actor)
        with self._transaction() as tx:
            alert, change = resolve(tx.locked(alert_id), actor, at_ms, note)
            tx.update(alert, change)
            if announce is not None:
                put_announcements(tx.conn, announce([(alert, change)]))
            return alert, change

    def escalate(
        self,
        alert_id: str,
        at_ms: int,
        announce: Announce | None = None,
        check: Check | None = None,
    ) -> tuple[Alert, AlertEvent]:
        """Up one level. AlertNotFound, or InvalidTransition if not open or at the top;
        ``check`` as for ``apply_many``."""
        with self._transaction() as tx:
            if check is not None:
                check(tx.conn)
            alert, change = escalate(tx.locked(alert_id), at_ms)
            tx.update(alert, change)
            if announce is not None:
                put_announcements(tx.conn, announce([(alert, change)]))
            return alert, change

    # -- the outbox of announcements ---------------------------------------------------------

    def queue_announcements(self, rows: Sequence[tuple[str, bytes]]) -> None:
        """Messages to send, in their own transaction (for a change already committed)."""
        if rows:
            with self._transaction() as tx:
                put_announcements(tx.conn, rows)

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
                NOT_RESOLVED, {"rule_id": rule_id, "device_id": device_id}
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
        query = select(alerts.c.body).where(UNRESOLVED).order_by(alerts.c.opened_ms, alerts.c.id)
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
            conditions.append(or_(*(alerts.c[c] == area_id for c in AREA_COLUMNS)))
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
            put_state(conn, key, value, at_ms)

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
