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

Pushes to a neighbouring city (``push:`` of the channels' config; ``push.py``): an alert
change of a pushed station is also one delivery per push that takes alerts, to recipient
``push/{id}`` on its webhook, keyed the same way, at once — no severity filter, no quiet hours
(the neighbour gets every change). A push's batch of observations is a job of its own on topic
``push/{id}``, one delivery keyed by (push, period start).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from devices.registry import Registry
from ingest.channels.config import Push
from ingest.delivery.database import FAILED, PENDING
from ingest.delivery.notices import Message, NotAMessage, read_message
from ingest.delivery.plan import ChannelPlan

log = logging.getLogger(__name__)

PUSH = "push/"  # a push's recipient and its batch jobs' topic: push/{id}


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
        pushes: Sequence[Push] = (),
    ) -> None:
        self._plan = plan
        self._people = people
        self._registry = registry
        self._pushes = tuple(pushes)

    def __call__(self, topic: str, payload: bytes, now_ms: int) -> list[dict[str, Any]]:
        if topic.startswith(PUSH):
            return batch_rows(topic, payload, self._pushes, self._plan(), now_ms)
        try:
            message = read_message(topic, payload, self._registry)
        except NotAMessage as e:
            log.warning("channel job is not an announcement, dropped: %s", e)
            return []
        plan = self._plan()
        rows = expand(message, plan, self._people, self._registry, now_ms)
        if not rows and message.subject == "alert" and message.severity == "critical":
            rows = [nobody_row(message, now_ms)]
        return rows + push_rows(message, payload, self._pushes, plan, now_ms)


def nobody_row(message: Message, now_ms: int) -> dict[str, Any]:
    """A critical alert's audience has no endpoint at all: a failed delivery to the audience,
    so the alert counts as reaching nobody and is escalated like one whose platforms failed."""
    return {
        "key": delivery_key(message.digest, message.audience, "-"),
        "subject": message.subject,
        "subject_id": message.subject_id,
        "event": message.event,
        "severity": message.severity,
        "recipient": message.audience,
        "channel": "-",
        "endpoint": "-",
        "notice": message.fields,
        "state": FAILED,
        "attempts": 0,
        "created_ms": now_ms,
        "next_ms": now_ms,
    }


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


def _push_row(
    key: str,
    push: Push,
    subject: str,
    subject_id: str,
    event: str,
    severity: str,
    notice: dict[str, Any],
    channel: str,
    now_ms: int,
) -> dict[str, Any]:
    return {
        "key": key,
        "subject": subject,
        "subject_id": subject_id,
        "event": event,
        "severity": severity,
        "recipient": f"{PUSH}{push.id}",
        "channel": channel,
        "endpoint": push.endpoint,
        "notice": notice,
        "state": PENDING,
        "attempts": 0,
        "created_ms": now_ms,
        "next_ms": now_ms,  # a neighbouring city is not held by our quiet hours
    }


def _alert_device(payload: bytes) -> str | None:
    """The device of an alert's announcement; None for our own escalation of an undelivered
    alert (ingest/delivery/escalation.py: an operators' matter, not the neighbour's)."""
    try:
        body = json.loads(payload)
        return None if body.get("undelivered") else str(body["alert"]["device_id"])
    except (KeyError, TypeError, ValueError):
        return None


def push_rows(
    message: Message, payload: bytes, pushes: Sequence[Push], plan: ChannelPlan, now_ms: int
) -> list[dict[str, Any]]:
    """An alert change of a pushed station: one delivery per push that takes its alerts (the
    same change told on several topics is one message: one key)."""
    if message.subject != "alert" or not any(p.alerts for p in pushes):
        return []
    device = _alert_device(payload)
    rows = []
    for push in pushes:
        if not push.alerts or device not in push.stations or push.endpoint not in plan.endpoints:
            continue
        key = delivery_key(message.digest, f"{PUSH}{push.id}", push.endpoint)
        channel = plan.endpoints[push.endpoint].type
        rows.append(
            _push_row(
                key,
                push,
                message.subject,
                message.subject_id,
                message.event,
                message.severity,
                message.fields,
                channel,
                now_ms,
            )
        )
    return rows


def batch_rows(
    topic: str, payload: bytes, pushes: Sequence[Push], plan: ChannelPlan, now_ms: int
) -> list[dict[str, Any]]:
    """A push's batch of observations (a job ``push/{id}`` of ``push.py``): one delivery,
    keyed by (push, period start), so the batch of a period queued twice is sent once."""
    push = next((p for p in pushes if f"{PUSH}{p.id}" == topic), None)
    try:
        body = json.loads(payload)
        period = int(body["period_start_ms"])
        notice: dict[str, Any] = dict(body["notice"])
    except (KeyError, TypeError, ValueError) as e:
        log.warning("push job %s is not a batch, dropped: %r", topic, e)
        return []
    if push is None or push.endpoint not in plan.endpoints:
        log.warning("push job %s: no such push (or endpoint) configured now, dropped", topic)
        return []
    key = delivery_key(f"observations/{period}", f"{PUSH}{push.id}", push.endpoint)
    channel = plan.endpoints[push.endpoint].type
    event = str(notice.get("event", "observations"))
    severity = str(notice.get("severity", "info"))
    return [_push_row(key, push, "push", push.id, event, severity, notice, channel, now_ms)]
