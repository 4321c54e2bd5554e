"""The deliveries in the alert store's database: every public method is one transaction.

Synchronous and thread-safe, like the alert store: the sender calls it through
``asyncio.to_thread``. Writers take the same turns as the alert store's (``BEGIN IMMEDIATE`` on
SQLite, the writers' lock on PostgreSQL: ``ingest/transactions.py``).
"""

from __future__ import annotations

import builtins
import hashlib
import logging
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from ingest.alerts.database import INSERT_EVENT, LOCKED, channel_jobs
from ingest.alerts.transaction import put_announcements
from ingest.delivery.database import (
    DELIVERED,
    EXPIRED,
    FAILED,
    PENDING,
    deliveries,
    delivery_attempts,
    metadata,
    undelivered,
)
from ingest.transactions import WRITE, open_engine, serialise_writers
from rules.alerts import Alert, AlertEvent, AlertState

log = logging.getLogger(__name__)

LOOK_BACK_MS = 24 * 3600 * 1000

# Given a job's topic, payload and now: its delivery rows (``dispatch.Expander``).
Expand = Callable[[str, bytes, int], list[dict[str, Any]]]
# Given the alert and the history row of its escalation: the announcements that tell of it.
Announce = Callable[[Alert, AlertEvent], Sequence[tuple[str, bytes]]]


@dataclass(frozen=True, slots=True)
class Due:
    """A delivery to send now."""

    id: int
    key: str
    recipient: str
    endpoint: str
    notice: dict[str, Any]
    attempts: int
    created_ms: int


@dataclass(frozen=True, slots=True)
class Attempt:
    """One attempt's receipt."""

    at_ms: int
    took_ms: int
    http_status: int | None
    code: str
    detail: str
    outcome: str  # delivered | retry | failed | expired


class DeliveryStore:
    """``deliveries``, ``delivery_attempts`` and ``undelivered_alerts`` on ``url`` (the alert
    store's database; tables created if missing)."""

    def __init__(self, url: str) -> None:
        self._engine: Engine = open_engine(url)
        self._writer: Engine = self._engine.execution_options(**{WRITE: True})
        with self._writer.begin() as conn:
            serialise_writers(conn)
            metadata.create_all(conn)
            channel_jobs.create(conn, checkfirst=True)  # the alert store's; here for tools

    def close(self) -> None:
        self._engine.dispose()

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        with self._writer.begin() as conn:
            serialise_writers(conn)
            yield conn

    # -- the queue --------------------------------------------------------------------------

    def dispatch(self, expand: Expand, now_ms: int, limit: int = 200) -> tuple[int, int]:
        """Expand up to ``limit`` jobs, oldest first, into deliveries and delete them, in one
        transaction: (jobs, deliveries made). A delivery whose key exists is not made again."""
        with self._transaction() as conn:
            jobs = conn.execute(
                select(channel_jobs.c.id, channel_jobs.c.topic, channel_jobs.c.payload)
                .order_by(channel_jobs.c.id)
                .limit(limit)
            ).all()
            if not jobs:
                return 0, 0
            rows: list[dict[str, Any]] = []
            seen: set[str] = set()
            for job_id, topic, payload in jobs:
                try:
                    expanded = expand(topic, bytes(payload), now_ms)
                except Exception as e:  # one unreadable job must not hold back the others
                    log.exception(
                        "channel job %d (%s) cannot be expanded; kept as failed", job_id, topic
                    )
                    expanded = [unreadable_job(job_id, topic, bytes(payload), e, now_ms)]
                for row in expanded:
                    if row["key"] not in seen:
                        seen.add(row["key"])
                        rows.append(row)
            made = self._insert_new(conn, rows)
            conn.execute(channel_jobs.delete().where(channel_jobs.c.id.in_([j[0] for j in jobs])))
            return len(jobs), made

    @staticmethod
    def _insert_new(conn: Connection, rows: list[dict[str, Any]]) -> int:
        if not rows:
            return 0
        if conn.dialect.name == "postgresql":
            pg = postgresql.insert(deliveries).on_conflict_do_nothing(index_elements=["key"])
            return conn.execute(pg, rows).rowcount or 0
        if conn.dialect.name == "sqlite":
            lite = sqlite.insert(deliveries).on_conflict_do_nothing(index_elements=["key"])
            return conn.execute(lite, rows).rowcount or 0
        keys = [r["key"] for r in rows]
        there = set(
            conn.execute(select(deliveries.c.key).where(deliveries.c.key.in_(keys))).scalars()
        )
        fresh = [r for r in rows if r["key"] not in there]
        if fresh:
            conn.execute(deliveries.insert(), fresh)
        return len(fresh)

    def jobs_waiting(self) -> int:
        with self._engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(channel_jobs)).scalar_one())

    def due(
        self, endpoint: str, now_ms: int, limit: int, skip: Collection[int] = ()
    ) -> builtins.list[Due]:
        """Pending deliveries on ``endpoint`` whose time has come, oldest first."""
        if limit <= 0:
            return []
        query = (
            select(
                deliveries.c.id,
                deliveries.c.key,
                deliveries.c.recipient,
                deliveries.c.endpoint,
                deliveries.c.notice,
                deliveries.c.attempts,
                deliveries.c.created_ms,
            )
            .where(
                deliveries.c.state == PENDING,
                deliveries.c.endpoint == endpoint,
                deliveries.c.next_ms <= now_ms,
            )
            .order_by(deliveries.c.next_ms, deliveries.c.id)
            .limit(limit + len(skip))
        )
        with self._engine.connect() as conn:
            found = [Due(*row) for row in conn.execute(query)]
        return [d for d in found if d.id not in skip][:limit]

    def record(self, delivery_id: int, attempt: Attempt, state: str, next_ms: int) -> None:
        """An attempt's receipt and the delivery's new state, in one transaction."""
        with self._transaction() as conn:
            conn.execute(
                delivery_attempts.insert().values(delivery_id=delivery_id, **_fields(attempt))
            )
            done = None if state == PENDING else attempt.at_ms
            conn.execute(
                deliveries.update()
                .where(deliveries.c.id == delivery_id)
                .values(
                    state=state,
                    attempts=deliveries.c.attempts + 1,
                    next_ms=next_ms,
                    done_ms=done,
                )
            )

    def expire(self, now_ms: int, max_age_ms: int) -> int:
        """Pending deliveries older than ``max_age_ms`` given up on (``expired``)."""
        with self._transaction() as conn:
            ids = builtins.list(
                conn.execute(
                    select(deliveries.c.id).where(
                        deliveries.c.state == PENDING,
                        deliveries.c.created_ms <= now_ms - max_age_ms,
                    )
                ).scalars()
            )
            if ids:
                conn.execute(
                    deliveries.update()
                    .where(deliveries.c.id.in_(ids))
                    .values(state=EXPIRED, done_ms=now_ms)
                )
                conn.execute(
                    delivery_attempts.insert(),
                    [
                        {
                            "delivery_id": i,
                            "at_ms": now_ms,
                            "took_ms": 0,
                            "http_status": None,
                            "code": "expired",
                            "detail": f"not delivered within {max_age_ms // 1000} s",
                            "outcome": EXPIRED,
                        }
                        for i in ids
                    ],
                )
            return len(ids)

    # -- undelivered critical alerts --------------------------------------------------------

    def undelivered_due(self, now_ms: int, after_ms: int) -> builtins.list[str]:
        """Critical alerts with deliveries, none delivered, the first made ``after_ms`` ago or
        more, not yet flagged. Looks back ``after_ms`` + a day (the deliveries' max age): an
        older alert was looked at while the sender ran, or is past telling."""
        reached = func.sum(case((deliveries.c.state == DELIVERED, 1), else_=0))
        query = (
            select(deliveries.c.subject_id)
            .where(
                deliveries.c.subject == "alert",
                deliveries.c.severity == "critical",
                deliveries.c.created_ms >= now_ms - after_ms - LOOK_BACK_MS,
                deliveries.c.subject_id.not_in(select(undelivered.c.alert_id)),
                # A neighbouring city reached is not one of ours reached (push.py).
                deliveries.c.recipient.not_like("push/%"),
            )
            .group_by(deliveries.c.subject_id)
            .having(func.min(deliveries.c.created_ms) <= now_ms - after_ms, reached == 0)
        )
        with self._engine.connect() as conn:
            return builtins.list(conn.execute(query).scalars())

    def flag_undelivered(
        self, alert_id: str, now_ms: int, detail: str, announce: Announce
    ) -> AlertEvent | None:
        """Record on the alert that nobody was reached (a history row, its announcements and
        the flag), in one transaction; None if it was flagged meanwhile, or is no longer open
        (someone acknowledged or resolved it: they were reached another way)."""
        with self._transaction() as conn:
            if conn.execute(
                select(undelivered.c.alert_id).where(undelivered.c.alert_id == alert_id)
            ).first():
                return None
            body = conn.execute(LOCKED, {"alert_id": alert_id}).scalar_one_or_none()
            alert = None if body is None else Alert.model_validate(body)
            escalating = alert is not None and alert.state is AlertState.OPEN
            conn.execute(
                undelivered.insert().values(
                    alert_id=alert_id, at_ms=now_ms, detail=detail, escalated=escalating
                )
            )
            if alert is None or not escalating:
                return None
            event = AlertEvent.model_validate(
                {"alert_id": alert_id, "at_ms": now_ms, "action": "escalated", "detail": detail}
            )
            conn.execute(
                INSERT_EVENT,
                [{"alert_id": alert_id, "at_ms": now_ms, "body": event.model_dump(mode="json")}],
            )
            put_announcements(conn, announce(alert, event))
            return event

    # -- reading (the API) ------------------------------------------------------------------

    def of_subject(self, subject: str, subject_id: str) -> builtins.list[dict[str, Any]]:
        """Every delivery of an alert or a case with its attempts, oldest first."""
        with self._engine.connect() as conn:
            rows = (
                conn.execute(
                    select(deliveries)
                    .where(deliveries.c.subject == subject, deliveries.c.subject_id == subject_id)
                    .order_by(deliveries.c.id)
                )
                .mappings()
                .all()
            )
            ids = [r["id"] for r in rows]
            tries: dict[int, builtins.list[dict[str, Any]]] = {i: [] for i in ids}
            if ids:
                for a in conn.execute(
                    select(delivery_attempts)
                    .where(delivery_attempts.c.delivery_id.in_(ids))
                    .order_by(delivery_attempts.c.seq)
                ).mappings():
                    tries[a["delivery_id"]].append(
                        {
                            k: a[k]
                            for k in (
                                "at_ms",
                                "took_ms",
                                "http_status",
                                "code",
                                "detail",
                                "outcome",
                            )
                        }
                    )
        return [
            {
                "id": r["id"],
                "key": r["key"],
                "event": r["event"],
                "recipient": r["recipient"],
                "channel": r["channel"],
                "endpoint": r["endpoint"],
                "state": r["state"],
                "created_ms": r["created_ms"],
                "done_ms": r["done_ms"],
                "attempts": tries[r["id"]],
            }
            for r in rows
        ]

    def undelivered_flag(self, alert_id: str) -> dict[str, Any] | None:
        """The flag of an alert nobody was reached for (``at_ms``, ``detail``), or None."""
        with self._engine.connect() as conn:
            row = conn.execute(
                select(undelivered.c.at_ms, undelivered.c.detail).where(
                    undelivered.c.alert_id == alert_id, undelivered.c.escalated.is_(True)
                )
            ).first()
        return None if row is None else {"at_ms": row[0], "detail": row[1]}

    def flagged(self, limit: int = 200) -> builtins.list[dict[str, Any]]:
        """The alerts escalated because nobody was reached, newest first."""
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(undelivered.c.alert_id, undelivered.c.at_ms, undelivered.c.detail)
                .where(undelivered.c.escalated.is_(True))
                .order_by(undelivered.c.at_ms.desc())
                .limit(limit)
            ).all()
        return [{"alert": r[0], "at_ms": r[1], "detail": r[2]} for r in rows]

    def counts(self) -> dict[str, int]:
        """Deliveries by state."""
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(deliveries.c.state, func.count()).group_by(deliveries.c.state)
            ).all()
        return {str(s): int(n) for s, n in rows}


def _fields(attempt: Attempt) -> dict[str, Any]:
    return {
        "at_ms": attempt.at_ms,
        "took_ms": attempt.took_ms,
        "http_status": attempt.http_status,
        "code": attempt.code[:64],
        "detail": attempt.detail[:500],
        "outcome": attempt.outcome,
    }


def unreadable_job(
    job_id: int, topic: str, payload: bytes, error: Exception, now_ms: int
) -> dict[str, Any]:
    """A job that could not be expanded, kept for inspection as a failed delivery of nobody."""
    return {
        "key": hashlib.sha256(b"unreadable\n" + topic.encode() + b"\n" + payload).hexdigest(),
        "subject": "job",
        "subject_id": str(job_id)[:32],
        "event": "unreadable",
        "severity": "info",
        "recipient": "-",
        "channel": "-",
        "endpoint": "-",
        "notice": {
            "topic": topic[:255],
            "error": f"{type(error).__name__}: {error}"[:500],
            "payload": payload[:2000].decode("utf-8", "replace"),
        },
        "state": FAILED,
        "attempts": 0,
        "created_ms": now_ms,
        "next_ms": now_ms,
    }
