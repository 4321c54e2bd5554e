"""The deliveries' tables, in the alert store's database beside ``channel_jobs``.

Portable types only (SQLite and PostgreSQL). Created by ``DeliveryStore`` if missing, as the
case store creates its own; the job queue itself (``channel_jobs``) is the alert store's, since
it is written in the alert's transaction.
"""

from __future__ import annotations

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
    Text,
)

metadata = MetaData()

# One message to one recipient on one endpoint. ``key`` = sha256(message, recipient, endpoint):
# the same for every attempt, handed to the platform as its idempotency key.
deliveries = Table(
    "deliveries",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("key", String(64), nullable=False, unique=True),
    Column("subject", String(8), nullable=False),  # alert | case
    Column("subject_id", String(32), nullable=False),
    Column("event", String(32), nullable=False),
    Column("severity", String(16), nullable=False),
    Column("recipient", String(160), nullable=False),  # person/{username} | department/{id}/{area}
    Column("channel", String(16), nullable=False),  # the endpoint's platform type
    Column("endpoint", String(64), nullable=False),
    Column("notice", JSON, nullable=False),  # the Notice's fields (ingest/channels/__init__.py)
    Column("state", String(12), nullable=False),  # pending | delivered | failed | expired
    Column("attempts", Integer, nullable=False, default=0),
    Column("created_ms", BigInteger, nullable=False),
    Column("next_ms", BigInteger, nullable=False),  # not sent before
    Column("done_ms", BigInteger),
    Index("deliveries_subject", "subject", "subject_id"),
    Index("deliveries_due", "state", "endpoint", "next_ms"),
    Index("deliveries_recent", "severity", "created_ms"),  # the escalation's look-back
)

# The receipts: every attempt, with what the platform answered.
delivery_attempts = Table(
    "delivery_attempts",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("delivery_id", Integer, nullable=False, index=True),
    Column("at_ms", BigInteger, nullable=False),
    Column("took_ms", Integer, nullable=False),
    Column("http_status", Integer),  # None: no answer (timeout, connection refused)
    Column("code", String(64), nullable=False),  # the platform's code, or the HTTP status
    Column("detail", Text, nullable=False),
    Column("outcome", String(12), nullable=False),  # delivered | retry | failed | expired
)

# Critical alerts that reached nobody in time (``escalation.py``): the operators' flag.
undelivered = Table(
    "undelivered_alerts",
    metadata,
    Column("alert_id", String(32), primary_key=True),
    Column("at_ms", BigInteger, nullable=False),
    Column("detail", Text, nullable=False),
    # False: looked at and not escalated (acknowledged or resolved by then: someone knew).
    Column("escalated", Boolean, nullable=False),
)

PENDING, DELIVERED, FAILED, EXPIRED = "pending", "delivered", "failed", "expired"
