"""The cases' tables, in the alert store's database (``AlertStore``'s URL): a case filed from an
alert is written in the alert's own transaction, and its announcements go through the same
outbox table (``announcements``, ingest/alerts/database.py).

Portable types only, so the same schema runs on the embedded SQLite file and on PostgreSQL. The
whole case and each history row are kept as JSON (new fields need no migration); the columns
beside them are what lists and the overdue sweep filter on.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Index,
    Integer,
    MetaData,
    String,
    Table,
)

from rules.cases import Case, CaseEvent

metadata = MetaData()

cases = Table(
    "cases",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("state", String(16), nullable=False),
    Column("severity", String(16), nullable=False),
    Column("source", String(16), nullable=False),
    # At most one case per alert: NULLs (cases not from an alert) do not collide in a unique
    # index, on SQLite and PostgreSQL alike.
    Column("alert_id", String(32), unique=True),
    Column("grid", String(64)),
    Column("village", String(64)),
    Column("township", String(64)),
    Column("county", String(64)),
    Column("city", String(64)),
    Column("assignee", String(200)),
    Column("handler", String(64)),
    Column("reporter", String(64), nullable=False),
    Column("reporter_person", String(64)),
    Column("reporter_token", String(16)),  # the reporting token's id when no person reported
    Column("late", Boolean, nullable=False, default=False),  # rules/cases.py Case.late
    Column("created_ms", BigInteger, nullable=False),
    Column("updated_ms", BigInteger, nullable=False),
    Column("deadline_ms", BigInteger),
    Column("body", JSON, nullable=False),  # the whole Case
    Index("cases_state", "state"),
    Index("cases_grid", "grid"),
    Index("cases_village", "village"),
    Index("cases_township", "township"),
    Index("cases_county", "county"),
    Index("cases_assignee", "assignee"),
    Index("cases_deadline", "deadline_ms"),
    Index("cases_created", "created_ms"),
)

case_events = Table(
    "case_events",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),  # insertion order
    Column("case_id", String(32), nullable=False, index=True),
    Column("at_ms", BigInteger, nullable=False),
    Column("body", JSON, nullable=False),  # the whole CaseEvent
)

AREA_COLUMNS = ("grid", "village", "township", "county", "city")


def row_of(case: Case) -> dict[str, Any]:
    """The row of ``case``: its filter columns and its body."""
    areas = {level.value: area for level, area in case.areas.items()}
    return {
        "id": case.id,
        "state": case.state.value,
        "severity": case.severity.value,
        "source": case.source.value,
        "alert_id": case.alert_id,
        **{c: areas.get(c) for c in AREA_COLUMNS},
        "assignee": case.assignee,
        "handler": case.handler,
        "reporter": case.reporter,
        "reporter_person": case.reporter_person,
        "reporter_token": case.reporter_token,
        "late": case.late,
        "created_ms": case.created_ms,
        "updated_ms": case.updated_ms,
        "deadline_ms": case.deadline_ms,
        "body": case.model_dump(mode="json"),
    }


def event_row(event: CaseEvent) -> dict[str, Any]:
    """The history row of ``event``."""
    return {"case_id": event.case_id, "at_ms": event.at_ms, "body": event.model_dump(mode="json")}
