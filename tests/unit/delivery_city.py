"""A channels config for the case tests' small city (tests/unit/casecity.py), alert payloads
as the service announces them, and a minimal platform of our own for the delivery tests."""

from __future__ import annotations

import json
from typing import Any

from devices.kinds import Kind, Level
from devices.registry import Registry
from ingest.channels import Notice, Outcome, Request
from ingest.channels.config import parse_channels
from ingest.delivery.plan import ChannelPlan, plan_of
from ingest.people import People
from rules.alerts import Alert, AlertAction, AlertEvent
from rules.model import Severity

T0 = 1_795_000_000_000  # 2026-11-18T09:46:40Z: 17:46 in Shanghai, outside the quiet hours
SMS_BODY = '{"mobile": "{phone}", "content": "{text}", "requestId": "{id}"}'


def channels(base: str = "http://127.0.0.1:9", **over: Any) -> dict[str, Any]:
    """li.na: a WeCom robot and SMS; the flood HQ's unit in co1: a webhook; the urban
    department (every unit): the same robot."""
    config: dict[str, Any] = {
        "endpoints": {
            "grid-wecom": {"type": "wecom", "url": f"{base}/cgi-bin/webhook/send", "key": "k1"},
            "flood-hook": {"type": "webhook", "url": f"{base}/hook", "secret": "s3cret"},
            "gw": {"type": "sms", "url": f"{base}/sms/send", "key": "k2", "body": SMS_BODY},
        },
        "people": {"li.na": {"endpoints": ["grid-wecom"], "sms": "gw", "phone": "13900000001"}},
        "departments": {"department/flood_hq/co1": ["flood-hook"], "urban": ["grid-wecom"]},
    }
    return {**config, **over}


def plan(reg: Registry, who: People, **over: Any) -> ChannelPlan:
    return plan_of(parse_channels(channels(**over), who, reg), who, reg)


def alert(
    severity: str = "critical",
    audiences: tuple[str, ...] = ("grid/g1",),
    alert_id: str = "A-000000000001",
    at_ms: int = T0,
) -> Alert:
    return Alert(
        id=alert_id,
        rule_id="river_over_guarantee",
        severity=Severity(severity),
        device_id="r1",
        kind=Kind.RIVER,
        areas={Level.GRID: "g1", Level.VILLAGE: "v1", Level.TOWNSHIP: "t1", Level.COUNTY: "co1"},
        opened_ms=at_ms,
        updated_ms=at_ms,
        raised_ms=at_ms,
        value=213.9,
        audiences=audiences,
    )


def payload(a: Alert, action: str = "opened", at_ms: int | None = None) -> bytes:
    event = AlertEvent(alert_id=a.id, at_ms=at_ms or a.opened_ms, action=AlertAction(action))
    return json.dumps(
        {
            "alert": a.model_dump(mode="json"),
            "event": event.model_dump(mode="json"),
            "message_zh": f"【紧急·新告警】水位超保证：资江站 {a.value} m",
            "message_en": f"[critical · new alert] River over guarantee: r1 {a.value} m",
        },
        ensure_ascii=False,
    ).encode()


def announcements(a: Alert, action: str = "opened") -> list[tuple[str, bytes]]:
    body = payload(a, action)
    return [(f"alerts/{key}", body) for key in a.audiences]


class EchoPlatform:
    """A minimal platform: POSTs the notice's key and title as JSON to ``url``; the server's
    ``{"ok": true}`` is delivered, 5xx and 429 are retried, anything else failed."""

    def __init__(
        self, url: str, type: str = "webhook", rate_per_minute: int = 600, idempotent: bool = True
    ) -> None:
        self.url = url
        self.type = type
        self.rate_per_minute = rate_per_minute
        self.idempotent = idempotent

    def request(self, notice: Notice, now_ms: int) -> Request:
        body = json.dumps(
            {
                "key": notice.key,
                "subject_id": notice.subject_id,
                "title": notice.title,
                "at": now_ms,
            }
        ).encode()
        return Request("POST", self.url, {"Content-Type": "application/json"}, body)

    def outcome(self, status: int, body: bytes) -> Outcome:
        if status == 200 and body.startswith(b'{"ok"'):
            return Outcome(True, False, "0")
        retry_after = 1.0 if status == 429 else None
        return Outcome(False, status >= 500 or status == 429, str(status), "", retry_after)
