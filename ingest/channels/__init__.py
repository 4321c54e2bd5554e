"""Delivery channels (issue 19): how one notice reaches one recipient on one platform.

Each platform is one small module (Telegraf's plugin folders are the model): ``wecom.py``
(企业微信 group robot), ``dingtalk.py`` (钉钉 custom robot, signed timestamp), ``feishu.py``
(飞书 custom bot, signature), ``sms.py`` (a generic HTTP SMS gateway from a template) and
``webhook.py`` (a generic HMAC-SHA256 signed webhook for other systems and neighbouring
cities). A platform turns a ``Notice`` into the HTTP ``Request`` it documents, and reads the
platform's answer into an ``Outcome``: delivered, worth retrying (5xx, 429, timeouts, the
platform's own "too many requests" codes), or failed for good. No I/O here: the delivery
loop (``ingest/delivery/``) owns the HTTP client, the retries, the rate limits and the
receipts, once for all platforms.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class Notice:
    """What one recipient is told: an alert's or a case's change, ready to render."""

    key: str  # idempotency key: the same for every retry of (message, recipient, channel)
    subject: str  # "alert" or "case"
    subject_id: str  # the alert's or case's id
    event: str  # opened, escalated, resolved, dispatched, ...
    severity: str  # info, warning, major, critical
    title: str  # one line, Chinese first: "资江邵阳水文站 水位超警戒 (River over warning)"
    place: str  # the area path, Chinese names: "邵阳市 双清区 …"
    rule: str  # the rule's name_zh and id
    value: str  # the value with its unit, or the case's step
    at: str  # local time it happened, ISO with offset
    link: str  # the page of the alert or case
    lines: tuple[str, ...] = field(default_factory=tuple)  # further lines (the bilingual text)
    # What a receiving system reads rather than a person (the signed webhook sends it; the
    # robots and SMS do not): a push's batch of observations (ingest/delivery/push.py).
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Request:
    """One HTTP request, as the platform documents it."""

    method: str
    url: str
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the platform's answer means."""

    delivered: bool
    retry: bool  # not delivered, but worth trying again later
    code: str  # the platform's own code or the HTTP status, for the receipt
    detail: str = ""  # the platform's message, cut to 500 characters
    retry_after_s: float | None = None  # the platform asked to wait this long


class Platform(Protocol):
    """One configured endpoint of one platform (a robot's webhook, an SMS gateway)."""

    type: str  # wecom | dingtalk | feishu | sms | webhook
    rate_per_minute: int  # the platform's documented limit for one endpoint
    idempotent: bool  # whether a retry with the same key cannot become a second message

    def request(self, notice: Notice, now_ms: int) -> Request:
        """The request that tells ``notice`` (signed for ``now_ms`` where the platform signs)."""
        ...

    def outcome(self, status: int, body: bytes) -> Outcome:
        """The platform's answer read."""
        ...
