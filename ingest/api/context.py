"""What the API's routes need from the running service, handed over in one object.

The service builds it (``ingest/service.py``); tests build it around real stores. Routes get it
through the ``context`` dependency, never through globals.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from fastapi import Request

from devices.registry import Registry
from ingest.alerts.feed import AlertFeed
from ingest.alerts.store import AlertStore, Announce
from ingest.api.tokens import TokenStore
from ingest.cases.config import CaseConfig
from ingest.cases.photos import PhotoStore
from ingest.cases.store import CaseStore
from ingest.cluster.leases import Leases
from ingest.intake.skew import ClockSkew
from ingest.metrics import Metrics
from ingest.people import People, PeopleFile
from ingest.settings import Settings
from ingest.sinks.deadletters import DeadLetterStore
from rules.alerts import Alert, AlertEvent
from rules.model import RuleSet

# Readiness: each probe returns None when fine, or why not.
Probe = Callable[[], Awaitable[str | None]]


@dataclass
class ApiContext:
    """The service's parts the API reads and acts on."""

    settings: Settings
    registry: Registry
    rules: RuleSet
    rules_path: Path
    alert_store: AlertStore
    dead_letters: DeadLetterStore
    tokens: TokenStore
    http: aiohttp.ClientSession  # for InfluxDB queries
    feed: AlertFeed = field(default_factory=AlertFeed)
    # Tells people of a change made through the API (MQTT, live listeners, InfluxDB), as the
    # service does for its own changes; None where there is no service (some tests).
    announce: Callable[[Alert, AlertEvent], Awaitable[None]] | None = None
    # The MQTT messages that tell of a change, written into the alert store's outbox in the
    # ack's or resolve's own transaction, so a crash just after the commit loses none;
    # ``announce`` then only tells the rest (live listeners, InfluxDB).
    announcements: Announce | None = None
    probes: dict[str, Probe] = field(default_factory=dict)
    spool_size: Callable[[], int] = lambda: 0
    warnings: Callable[[], dict[str, str]] = dict  # /ready's warnings (ready all the same)
    metrics: Metrics | None = None
    clock_skew: ClockSkew | None = None  # each device's measured clock skew (ingest/intake/skew.py)
    tokens_checked: float = 0.0  # monotonic time the tokens file was last checked
    streams: dict[str, int] = field(default_factory=dict)  # token id → open alert streams
    leases: Leases | None = None  # the partition leases (GET /cluster); None: no cluster
    # Cases (ingest/api/cases.py); None: no cases here (the routes answer 503).
    cases: CaseStore | None = None
    case_config: CaseConfig | None = None
    photos: PhotoStore | None = None
    # The people file (ingest/people.py): who a ``person`` token is, who a case can go to.
    people: People | PeopleFile | None = None
    wake_outbox: Callable[[], None] = lambda: None  # a case step wrote announcements: send now


def context(request: Request) -> ApiContext:
    """The dependency every route uses."""
    ctx: ApiContext = request.app.state.ctx
    return ctx
