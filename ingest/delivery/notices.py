"""An announcement (a channel job's topic and payload) read as the message the channels tell:
what it is about, its audience key, and the ``Notice`` fields a platform renders.

The payload is the one the MQTT announcement carries (ingest/alerts/alerting.py for alerts,
ingest/cases/announce.py for cases), so a channel says what the phone says.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from devices.kinds import Level
from devices.registry import Registry
from ingest.channels import Notice

TZ = ZoneInfo("Asia/Shanghai")
_PLACE_ORDER = [lv.value for lv in Level]  # city first


class NotAMessage(ValueError):
    """A job whose topic or payload is not an alert's or a case's announcement."""


@dataclass(frozen=True, slots=True)
class Message:
    """One announcement, as the dispatcher expands it."""

    digest: str  # sha256 of the payload: the same change told on several topics is one message
    subject: str  # alert | case
    subject_id: str
    event: str
    severity: str
    audience: str  # the topic's audience key: ``grid/{id}``, ``department/{id}/{area}``, ...
    at_ms: int
    fields: dict[str, Any]  # the Notice's fields but ``key``

    def notice(self, key: str) -> Notice:
        return notice_of(key, self.fields)


def notice_of(key: str, fields: dict[str, Any]) -> Notice:
    """The ``Notice`` of stored ``fields`` (``deliveries.notice``) under ``key``."""
    known = {k: v for k, v in fields.items() if k in Notice.__dataclass_fields__}
    return Notice(key=key, **{**known, "lines": tuple(known.get("lines", ()))})


def _place(areas: dict[str, str], registry: Registry) -> str:
    names = []
    for level in _PLACE_ORDER:
        area = registry.areas.get(areas.get(level, ""))
        if area is not None:
            names.append(area.name)
    return " ".join(names)


def _local(at_ms: int) -> str:
    return datetime.fromtimestamp(at_ms / 1000, UTC).astimezone(TZ).isoformat(timespec="seconds")


def read_message(topic: str, payload: bytes, registry: Registry) -> Message:
    """The message of one job; NotAMessage if it is not one."""
    family, _, audience = topic.partition("/")
    try:
        body = json.loads(payload)
        subject = {"alerts": "alert", "cases": "case"}[family]
        thing: dict[str, Any] = body[subject]
        event: dict[str, Any] = body["event"]
        zh, en = str(body.get("message_zh", "")), str(body.get("message_en", ""))
        at_ms = int(event["at_ms"])
        thing_id, severity, action = str(thing["id"]), str(thing["severity"]), str(event["action"])
    except (KeyError, TypeError, ValueError) as e:
        raise NotAMessage(f"{topic}: {e!r}") from None
    if not audience:
        raise NotAMessage(f"{topic}: no audience")
    areas = thing.get("areas") or {}
    if subject == "alert":
        rule, value = str(thing.get("rule_id", "")), thing.get("value")
        link = f"/ui/device.html?id={thing.get('device_id', '')}"
    else:
        rule, value = str(thing.get("rule_id") or ""), thing.get("step") or thing.get("state")
        link = f"/ui/cases.html?id={thing_id}"
    fields = asdict(
        Notice(
            key="",
            subject=subject,
            subject_id=thing_id,
            event=action,
            severity=severity,
            title=zh.split("\n", 1)[0][:200] or f"{subject} {thing_id} {action}",
            place=_place(areas, registry),
            rule=rule,
            value="" if value is None else str(value),
            at=_local(at_ms),
            link=link,
            lines=(en,) if en else (),
        )
    )
    fields.pop("key")
    fields["lines"] = list(fields["lines"])
    return Message(
        digest=hashlib.sha256(payload).hexdigest(),
        subject=subject,
        subject_id=thing_id,
        event=action,
        severity=severity,
        audience=audience,
        at_ms=at_ms,
        fields=fields,
    )
