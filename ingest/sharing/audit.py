"""The access audit: one row per request of a department token — who (token, department), what
(endpoint, data set, query parameters), when, how many rows it got and the answer's status —
in the ``access_audit`` table of the alert store's database (SQLite file or
``CITYSENSE_DATABASE_URL``, so a cluster's workers write one audit).

Blocking calls: the API runs them in a thread (ingest/api/audit.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    select,
)

from ingest.transactions import WRITE, open_engine, serialise_writers

metadata = MetaData()
access_audit = Table(
    "access_audit",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("at_ms", BigInteger, nullable=False),
    Column("token_id", String(12), nullable=False),
    Column("token_name", String(64), nullable=False),
    Column("department", String(64), nullable=False),
    Column("method", String(8), nullable=False),
    Column("endpoint", String(64), nullable=False),  # the route, e.g. /devices/{device_id}
    Column("path", String(255), nullable=False),  # the path asked for
    Column("data_set", String(32)),  # null: the request never named one (refused earlier)
    Column("query", JSON, nullable=False),  # parameter → its values
    Column("rows", Integer),  # rows answered; null when refused or failed
    Column("status", Integer, nullable=False),
    Column("code", String(32)),  # the named refusal (not_shared, no_grant, ...), if any
    Index("access_audit_department", "department", "at_ms"),
    Index("access_audit_at", "at_ms"),
)


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One read of a department token."""

    at_ms: int
    token_id: str
    token_name: str
    department: str
    method: str
    endpoint: str
    path: str
    status: int
    data_set: str | None = None
    query: dict[str, list[str]] = field(default_factory=dict)
    rows: int | None = None
    code: str | None = None


# Its own writers' turn on PostgreSQL (ingest/transactions.py): audit rows never wait behind
# the alert store's batches.
AUDIT_LOCK = 0x41_55_44_54  # "AUDT"
_COLUMNS = [c.name for c in access_audit.columns if c.name != "seq"]


class AuditLog:
    """The ``access_audit`` table; created if missing. Thread-safe (one engine)."""

    def __init__(self, url: str) -> None:
        self._engine = open_engine(url)
        self._writer = self._engine.execution_options(**{WRITE: True})
        with self._writer.begin() as conn:
            serialise_writers(conn)
            metadata.create_all(conn)

    def close(self) -> None:
        """Release the database's connections."""
        self._engine.dispose()

    def record(self, rec: AuditRecord) -> None:
        """Append one row (committed when this returns)."""
        values = {c: getattr(rec, c) for c in _COLUMNS}
        values["path"] = rec.path[:255]
        with self._writer.begin() as conn:
            serialise_writers(conn, AUDIT_LOCK)
            conn.execute(access_audit.insert().values(**values))

    def list(
        self,
        *,
        department: str | None = None,
        since_ms: int | None = None,
        until_ms: int | None = None,
        limit: int = 100,
    ) -> list[AuditRecord]:
        """Rows newest first; ``since`` inclusive, ``until`` exclusive."""
        query = select(*(access_audit.c[c] for c in _COLUMNS))
        if department is not None:
            query = query.where(access_audit.c.department == department)
        if since_ms is not None:
            query = query.where(access_audit.c.at_ms >= since_ms)
        if until_ms is not None:
            query = query.where(access_audit.c.at_ms < until_ms)
        query = query.order_by(access_audit.c.at_ms.desc(), access_audit.c.seq.desc()).limit(limit)
        with self._engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
        return [AuditRecord(**dict(r)) for r in rows]
