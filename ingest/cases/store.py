"""Where cases and their history are kept: the alert store's database, tables of their own.

SQLAlchemy Core, synchronous and thread-safe like the alert store (the API calls it through
``asyncio.to_thread``). Every public method is one transaction; a step reads the case and
writes it back in the same transaction with the row locked (``SELECT ... FOR UPDATE`` on
PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite, the writers' turn on both:
ingest/transactions.py), so two people acting on one case at once never overwrite each other:
the second sees the first's state and is refused if its step no longer fits.

A step's MQTT messages are written into the outbox table ``announcements`` in the step's own
transaction (``put_announcements``), as the alerts' are: nothing committed goes untold.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Collection, Container, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, and_, case, false, or_, select
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from ingest.alerts.database import announcements
from ingest.alerts.transaction import put_announcements
from ingest.cases.database import AREA_COLUMNS, case_events, cases, event_row, metadata, row_of
from ingest.transactions import WRITE, open_engine, serialise_writers
from rules.cases import (
    Case,
    CaseDeadlines,
    CaseEvent,
    CaseState,
    add_photo,
    overdue,
    supervise,
)

# Given the changes a transaction made, the (topic, payload) messages to send for them.
Announce = Callable[[Sequence[tuple[Case, CaseEvent]]], Sequence[tuple[str, bytes]]]
# Runs first in a write transaction and raises to refuse it (a worker's lost lease).
Check = Callable[[Connection], None]
# One lifecycle step: the case as stored (locked) → the case after it and its history row.
Step = Callable[[Case], tuple[Case, CaseEvent]]
SWEEP_LIMIT = 500  # overdue cases supervised per sweep; the rest are next second's


class CaseNotFound(LookupError):
    """No case with that id (the API answers 404)."""


class CaseExists(ValueError):
    """The alert already has a case (the API answers 409 ``case_exists``)."""

    def __init__(self, alert_id: str, case_id: str) -> None:
        super().__init__(f"alert {alert_id} already has case {case_id}")
        self.alert_id = alert_id
        self.case_id = case_id


@dataclass(frozen=True, slots=True)
class Viewer:
    """Whose cases: areas seen (grid up to city), assignee keys listened to, and who the caller
    is — a people-file username (reports and handling), or else the token's id (its reports:
    token names are not unique, so a name proves nothing)."""

    areas: frozenset[str] = frozenset()
    keys: frozenset[str] = frozenset()
    person: str | None = None
    token: str | None = None


@dataclass(frozen=True, slots=True)
class CaseQuery:
    """A list's filters, each optional and combined with AND."""

    states: Collection[CaseState] = ()
    area: str | None = None  # the case's area at any level
    assignee: str | None = None
    overdue: bool = False
    visible_to: Viewer | None = None  # None: everything (an operator)
    mine: Viewer | None = None  # assigned to one of its keys, or handled by it
    limit: int = 100


def _visible(viewer: Viewer) -> ColumnElement[bool]:
    ors: builtins.list[ColumnElement[bool]] = []
    if viewer.areas:
        ors += [cases.c[c].in_(sorted(viewer.areas)) for c in AREA_COLUMNS]
    if viewer.keys:
        ors.append(cases.c.assignee.in_(sorted(viewer.keys)))
    if viewer.person is not None:
        ors += [cases.c.reporter_person == viewer.person, cases.c.handler == viewer.person]
    if viewer.token is not None:
        ors.append(cases.c.reporter_token == viewer.token)
    return or_(*ors) if ors else false()


def _mine(viewer: Viewer) -> ColumnElement[bool]:
    ors: builtins.list[ColumnElement[bool]] = []
    if viewer.keys:
        ors.append(cases.c.assignee.in_(sorted(viewer.keys)))
    if viewer.person is not None:
        ors.append(cases.c.handler == viewer.person)
    return or_(*ors) if ors else false()


def insert_case(conn: Connection, new: Case, first: CaseEvent) -> None:
    """Store a new case and its first history row in ``conn``'s transaction; CaseExists if its
    alert already has a case."""
    if new.alert_id is not None:
        existing = case_of_alert(conn, new.alert_id)
        if existing is not None:
            raise CaseExists(new.alert_id, existing)
    conn.execute(cases.insert(), [row_of(new)])
    conn.execute(case_events.insert(), [event_row(first)])


def case_of_alert(conn: Connection, alert_id: str) -> str | None:
    """The id of the case filed from ``alert_id``, if any."""
    found = conn.execute(select(cases.c.id).where(cases.c.alert_id == alert_id)).scalar()
    return None if found is None else str(found)


def read_case(body: dict[str, Any]) -> Case:
    """A stored case, read for what this version knows: a row written by a newer one (a rolling
    upgrade) must not make every list and the overdue sweep fail."""
    return Case.model_validate(_known(body, Case.model_fields))


def _known(body: dict[str, Any], fields: Container[str]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k in fields}


def _locked(conn: Connection, case_id: str) -> Case:
    query = select(cases.c.body).where(cases.c.id == case_id).with_for_update()
    body = conn.execute(query).scalar_one_or_none()
    if body is None:
        raise CaseNotFound(f"no case {case_id!r}")
    return read_case(body)


def _write(conn: Connection, changed: Case, event: CaseEvent | None) -> None:
    row = row_of(changed)
    del row["id"]
    conn.execute(cases.update().where(cases.c.id == changed.id).values(**row))
    if event is not None:
        conn.execute(case_events.insert(), [event_row(event)])


class CaseStore:
    """Cases and their history, on ``url`` (the alert store's: ``store_url(...)``). Tables are
    created if missing."""

    def __init__(self, url: str) -> None:
        self._engine: Engine = open_engine(url)
        self._writer: Engine = self._engine.execution_options(**{WRITE: True})
        with self._writer.begin() as conn:  # serialised, so two processes may start together
            serialise_writers(conn)
            metadata.create_all(conn)
            announcements.create(conn, checkfirst=True)  # the outbox (the alert store's too)

    def close(self) -> None:
        """Release connections."""
        self._engine.dispose()

    @contextmanager
    def _transaction(self, check: Check | None = None) -> Iterator[Connection]:
        with self._writer.begin() as conn:
            serialise_writers(conn)
            if check is not None:
                check(conn)
            yield conn

    # -- writes, one transaction each -----------------------------------------------------------

    def create(self, new: Case, first: CaseEvent, announce: Announce | None = None) -> None:
        """Store a new case, its first history row and its messages; CaseExists if its alert
        already has a case (also when another writer filed one a moment ago)."""
        try:
            with self._transaction() as conn:
                insert_case(conn, new, first)
                if announce is not None:
                    put_announcements(conn, announce([(new, first)]))
        except IntegrityError:
            if new.alert_id is not None:
                with self._engine.connect() as conn:
                    existing = case_of_alert(conn, new.alert_id)
                if existing is not None:
                    raise CaseExists(new.alert_id, existing) from None
            raise

    def transition(
        self, case_id: str, step: Step, announce: Announce | None = None
    ) -> tuple[Case, CaseEvent]:
        """Apply ``step`` to the case as stored, with its row locked; store the result, its
        history row and its messages. CaseNotFound; whatever ``step`` raises (InvalidTransition
        for a step out of order) leaves everything as it was."""
        with self._transaction() as conn:
            changed, event = step(_locked(conn, case_id))
            _write(conn, changed, event)
            if announce is not None:
                put_announcements(conn, announce([(changed, event)]))
            return changed, event

    def attach_photo(self, case_id: str, photo_id: str, actor: str, at_ms: int) -> Case:
        """Add a stored photo to the case's photos (once), with a history row saying who.
        CaseNotFound; InvalidTransition once it is closed (checked under the lock: a close
        during the upload wins) or full."""
        with self._transaction() as conn:
            found = _locked(conn, case_id)
            if photo_id in found.photos:
                return found
            changed, event = add_photo(found, photo_id, actor, at_ms)
            _write(conn, changed, event)
            return changed

    def supervise_overdue(
        self,
        now_ms: int,
        deadlines: CaseDeadlines,
        announce: Announce | None = None,
        check: Check | None = None,
    ) -> builtins.list[tuple[Case, CaseEvent]]:
        """督办 every case whose step is past its deadline at ``now_ms`` (up to SWEEP_LIMIT), each
        in its own transaction with its messages; returns what was done. A case handled meanwhile
        is left alone (checked again under the lock)."""
        with self._engine.connect() as conn:
            ids = (
                conn.execute(
                    select(cases.c.id)
                    .where(cases.c.deadline_ms < now_ms, cases.c.state != CaseState.CLOSED.value)
                    .order_by(cases.c.deadline_ms)
                    .limit(SWEEP_LIMIT)
                )
                .scalars()
                .all()
            )
        done: builtins.list[tuple[Case, CaseEvent]] = []
        for case_id in ids:
            with self._transaction(check) as conn:
                current = _locked(conn, str(case_id))
                if not overdue(current, now_ms):
                    continue
                changed, event = supervise(current, now_ms, deadlines)
                _write(conn, changed, event)
                if announce is not None:
                    put_announcements(conn, announce([(changed, event)]))
                done.append((changed, event))
        return done

    # -- reads ---------------------------------------------------------------------------------

    def get(self, case_id: str) -> Case | None:
        """One case by id."""
        with self._engine.connect() as conn:
            body = conn.execute(
                select(cases.c.body).where(cases.c.id == case_id)
            ).scalar_one_or_none()
        return None if body is None else read_case(body)

    def history(self, case_id: str) -> builtins.list[CaseEvent]:
        """What happened to a case, oldest first (in the order it was recorded)."""
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(case_events.c.body)
                .where(case_events.c.case_id == case_id)
                .order_by(case_events.c.seq)
            ).scalars()
            return [CaseEvent.model_validate(_known(b, CaseEvent.model_fields)) for b in rows]

    def of_alert(self, alert_id: str) -> str | None:
        """The id of the case filed from ``alert_id``, if any."""
        with self._engine.connect() as conn:
            return case_of_alert(conn, alert_id)

    def list(self, query: CaseQuery, now_ms: int) -> builtins.list[Case]:
        """Cases matching ``query``: overdue first, then by deadline (soonest first, none last),
        then newest."""
        where: builtins.list[ColumnElement[bool]] = []
        if query.states:
            where.append(cases.c.state.in_([CaseState(s).value for s in query.states]))
        if query.area is not None:
            where.append(or_(*(cases.c[c] == query.area for c in AREA_COLUMNS)))
        if query.assignee is not None:
            where.append(cases.c.assignee == query.assignee)
        # Past its deadline, or past it once and the step not yet done (supervised).
        late = or_(
            cases.c.late.is_(True),
            and_(cases.c.deadline_ms.is_not(None), cases.c.deadline_ms < now_ms),
        )
        if query.overdue:
            where.append(and_(late, cases.c.state != CaseState.CLOSED.value))
        if query.visible_to is not None:
            where.append(_visible(query.visible_to))
        if query.mine is not None:
            where.append(_mine(query.mine))
        statement = (
            select(cases.c.body)
            .where(*where)
            .order_by(
                case((late, 0), else_=1),
                case((cases.c.deadline_ms.is_(None), 1), else_=0),
                cases.c.deadline_ms,
                cases.c.created_ms.desc(),
                cases.c.id.desc(),
            )
            .limit(max(0, query.limit))
        )
        with self._engine.connect() as conn:
            return [read_case(b) for b in conn.execute(statement).scalars()]

    def created_between(
        self, since_ms: int | None, until_ms: int | None, visible_to: Viewer | None = None
    ) -> builtins.list[Case]:
        """Every case created in [since, until) (each bound optional), for statistics."""
        where: builtins.list[ColumnElement[bool]] = []
        if since_ms is not None:
            where.append(cases.c.created_ms >= since_ms)
        if until_ms is not None:
            where.append(cases.c.created_ms < until_ms)
        if visible_to is not None:
            where.append(_visible(visible_to))
        statement = select(cases.c.body).where(*where).order_by(cases.c.created_ms)
        with self._engine.connect() as conn:
            return [read_case(b) for b in conn.execute(statement).scalars()]
