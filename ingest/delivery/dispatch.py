"""A channel job expanded into deliveries: one per (message, recipient, endpoint).

Recipients of an announcement on ``alerts/{key}`` or ``cases/{key}``: every person holding the
post ``key`` per the people file (``person/{username}``; a case's ``person/{username}`` key is
that person), and the key itself where the channels' config gives it endpoints of its own (a
department unit's duty robot, ``operators``). Each recipient's endpoints are filtered by the
severity's channel types (``ChannelPlan.endpoints_for``); in the quiet hours a non-critical
delivery is made at once but not sent before they end (``ChannelPlan.not_before``).

The idempotency key is sha256(message, recipient, endpoint), the message being the payload's
digest rather than the job's id: one change is told on each of its audience topics (a job
each), and a person holding two of those posts is told it once. The job is deleted in the
transaction that writes its deliveries, so a job is never expanded twice.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from typing import Any, Protocol

from devices.registry import Registry
from ingest.delivery.database import PENDING
from ingest.delivery.notices import Message, NotAMessage, read_message
from ingest.delivery.plan import ChannelPlan

log = logging.getLogger(__name__)


class Holders(Protocol):
    """The people file (ingest/people.py ``People`` or ``PeopleFile``)."""

    def holding(self, key: str, registry: Registry) -> list[Any]: ...


def delivery_key(message: str, recipient: str, endpoint: str) -> str:
    return hashlib.sha256(f"{message}\n{recipient}\n{endpoint}".encode()).hexdigest()


def recipients(audience: str, plan: ChannelPlan, people: Holders, registry: Registry) -> list[str]:
    """Who is told of a message to ``audience``, people first, each once."""
    found = [f"person/{p.username}" for p in people.holding(audience, registry)]
    if plan.has_own(audience):
        found.append(audience)
    return list(dict.fromkeys(found))


class Expander:
    """Turns one job into delivery rows (``deliveries`` columns)."""

    def __init__(
        self,
        plan: Callable[[], ChannelPlan],
        people: Holders,
        registry: Registry,
    ) -> None:
        self._plan = plan
        self._people = people
        self._registry = registry

    def __call__(self, topic: str, payload: bytes, now_ms: int) -> list[dict[str, Any]]:
        try:
            message = read_message(topic, payload, self._registry)
        except NotAMessage as e:
            log.warning("channel job is not an announcement, dropped: %s", e)
            return []
        return expand(message, self._plan(), self._people, self._registry, now_ms)


def expand(
    message: Message, plan: ChannelPlan, people: Holders, registry: Registry, now_ms: int
) -> list[dict[str, Any]]:
    """The deliveries of ``message``: its recipients' endpoints for its severity, now."""
    rows = []
    not_before = plan.not_before(message.severity, now_ms)  # quiet hours: non-critical waits
    for recipient in recipients(message.audience, plan, people, registry):
        for endpoint in plan.endpoints_for(recipient, message.severity):
            rows.append(
                {
                    "key": delivery_key(message.digest, recipient, endpoint),
                    "subject": message.subject,
                    "subject_id": message.subject_id,
                    "event": message.event,
                    "severity": message.severity,
                    "recipient": recipient,
                    "channel": plan.endpoints[endpoint].type,
                    "endpoint": endpoint,
                    "notice": message.fields,
                    "state": PENDING,
                    "attempts": 0,
                    "created_ms": now_ms,
                    "next_ms": not_before,
                }
            )
    return rows
