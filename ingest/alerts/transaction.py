"""One write transaction on the alert store: engine transitions applied, the rows batched."""

from __future__ import annotations

import builtins
import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Connection

from devices.kinds import Kind, Level
from ingest.alerts.database import (
    DEVICES_PER_QUERY,
    INSERT_ALERT,
    INSERT_EVENT,
    LAST_RESOLVE,
    LOCKED,
    NOT_RESOLVED_LOCKED,
    NOT_RESOLVED_OF_DEVICES,
    UPDATE_ALERT,
    announcements,
    engine_state,
    put_channel_jobs,
    row_of,
)
from rules.alerts import (
    AUTO,
    Alert,
    AlertEvent,
    AlertState,
    mark_flapping,
    open_alert,
    repeat,
    resolve,
)
from rules.audiences import Reach
from rules.model import Severity
from rules.transition import Reason, Transition


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
    # A person's resolve (wall ms) in the device's time as the engine judges it, or None if
    # that cannot be known (``Alerting._judged``); see ``WriteTransaction.apply``.
    judge: Callable[[str, int], int | None] | None = None
    # Who a new alert is told to (rules/audiences.py); None: the device's grid cell.
    reach: Reach | None = None


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


def put_announcements(conn: Connection, rows: Sequence[tuple[str, bytes]]) -> None:
    if rows:
        stamp = wall_ms()
        conn.execute(
            announcements.insert(),
            [{"topic": t, "payload": p, "created_ms": stamp} for t, p in rows],
        )
        put_channel_jobs(conn, rows, stamp)  # people's channels (issue 19, ingest/delivery/)


def put_state(conn: Connection, key: str, value: dict[str, Any], at_ms: int | None) -> None:
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    stamp = wall_ms() if at_ms is None else at_ms
    done = conn.execute(
        engine_state.update().where(engine_state.c.key == key).values(value=text, updated_ms=stamp)
    )
    if done.rowcount == 0:
        conn.execute(engine_state.insert().values(key=key, value=text, updated_ms=stamp))


class WriteTransaction:
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
        t = item.transition
        if t.action == "update" and item.judge is not None and self._sent_before_resolve(item):
            return None
        return self.apply(
            item.transition,
            severity=item.severity,
            kind=item.kind,
            areas=item.areas,
            now_ms=item.now_ms,
            reach=item.reach,
        )

    def apply(
        self,
        t: Transition,
        *,
        severity: Severity,
        kind: Kind,
        areas: dict[Level, str],
        now_ms: int | None,
        reach: Reach | None = None,
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
            reach=reach,
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
        reach: Reach | None = None,
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
                raised_ms=wall_ms() if now_ms is None else now_ms,
                audiences=None if reach is None else reach.keys,
                start_level=Level.GRID if reach is None else reach.start_level,
                area_chain=True if reach is None else reach.chain,
            )
            self.insert(alert, change)
            return alert, change, True
        if flapping:
            alert, change = mark_flapping(existing, ts_ms, detail)
        else:
            alert, change = repeat(existing, ts_ms, value, detail)
        self.update(alert, change)
        return alert, change, False

    def _sent_before_resolve(self, item: StoreTransition) -> bool:
        """Whether an update the engine judged while it held the condition open belongs to an
        alert a person resolved that the engine has not yet heard of (issue 14 review P3): the
        device sent it before the resolve. Dropped then: at hearing, the engine forgets that
        episode with the same placement. Otherwise (sent after, or no such resolve) the update
        opens a new alert, as a condition still there after a resolve must."""
        t = item.transition
        if self.not_resolved(t.rule_id, t.device_id) is not None:
            return False
        row = self.conn.execute(
            LAST_RESOLVE, {"rule_id": t.rule_id, "device_id": t.device_id}
        ).first()
        if row is None or row[1] == AUTO:
            return False
        assert item.judge is not None
        judged = item.judge(t.device_id, int(row[0]))
        # A clock never measured is taken as right here: this covers only what is read in the
        # moment before the engine hears of the resolve.
        return t.ts_ms <= (int(row[0]) if judged is None else judged)

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
                NOT_RESOLVED_LOCKED, {"rule_id": rule_id, "device_id": device_id}
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
            for start in range(0, len(ids), DEVICES_PER_QUERY):
                chunk = ids[start : start + DEVICES_PER_QUERY]
                query = {"rule_id": rule_id, "device_ids": chunk}
                for body in self.conn.execute(NOT_RESOLVED_OF_DEVICES, query).scalars():
                    alert = Alert.model_validate(body)
                    self._unresolved[alert.rule_id, alert.device_id] = alert

    def locked(self, alert_id: str) -> Alert:
        body = self.conn.execute(LOCKED, {"alert_id": alert_id}).scalar_one_or_none()
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
            rows = [row_of(a) for a in self._changed.values()]
            for row in rows:
                row["alert_id"] = row.pop("id")  # the WHERE; "id" would be a SET
            self.conn.execute(UPDATE_ALERT, rows)
        if self._opened:
            self.conn.execute(INSERT_ALERT, [row_of(a) for a in self._opened.values()])
        if self._events:
            self.conn.execute(INSERT_EVENT, self._events)
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
