"""Alerts and their lifecycle (docs/rules.md): open → acknowledged → resolved, and escalation.

Pure functions of an alert and a time: each returns the new alert and the history row to
record, so the store only persists and the rules about what may happen live here. Invalid
steps raise ``InvalidTransition``, which the API will answer with 409.
"""

from __future__ import annotations

import secrets
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator

from devices.kinds import Kind, Level
from devices.registry import AreaPath
from rules.model import Severity

__all__ = [
    "AUTO",
    "Alert",
    "AlertAction",
    "AlertEvent",
    "AlertState",
    "InvalidTransition",
    "ReservedActor",
    "Severity",
    "acknowledge",
    "area_ids",
    "check_person",
    "due_for_escalation",
    "escalate",
    "mark_flapping",
    "new_alert_id",
    "open_alert",
    "repeat",
    "resolve",
]

AUTO = "auto"  # the actor of a resolution made by the rule's own clear condition


class AlertState(StrEnum):
    """Where an alert is in its life."""

    OPEN = "open"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"


class AlertAction(StrEnum):
    """What a history row records."""

    OPENED = "opened"
    REPEATED = "repeated"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"
    ESCALATED = "escalated"
    FLAPPING = "flapping"  # a clear held back by flap suppression: it stays open, marked


class InvalidTransition(ValueError):
    """A lifecycle step that is not allowed from the alert's current state."""


class ReservedActor(ValueError):
    """A person's step named with the rules' own actor: the engine would never hear it."""


def check_person(actor: str) -> str:
    """``actor`` if it may name a person's acknowledge or resolve; ReservedActor if not.

    ``auto`` marks the rule's own resolves, which the engine does not need to hear; a person's
    resolve under that name would leave the engine holding a condition the store has closed.
    """
    if actor.strip().casefold() == AUTO:
        raise ReservedActor(f"{actor!r} is reserved for the rules' own resolves; name the person")
    return actor


class Alert(BaseModel):
    """One alert: at most one not resolved per (rule, device)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    rule_id: str
    severity: Severity
    device_id: str
    kind: Kind
    areas: dict[Level, str]  # the device's area path, grid up to city
    state: AlertState = AlertState.OPEN
    opened_ms: int
    updated_ms: int
    acknowledged_ms: int | None = None
    acknowledged_by: str | None = None
    resolved_ms: int | None = None
    resolved_by: str | None = None
    value: float | str | None = None
    detail: str = ""
    repeat_count: int = 0  # times the condition fired again after opening
    flapping: bool = False  # it opened and cleared too often and is held open; stays marked
    # Wall-clock time the service recorded it. Escalation counts from here, not from device
    # time: an alert read from a backlog after an outage has not been waiting on anyone.
    raised_ms: int | None = None
    escalation_level: Level = Level.GRID
    escalated_ms: int | None = None
    note: str | None = None
    # Who it has been told to, as audience keys (rules/audiences.py): the rule's audiences when
    # it opened, then each level escalation reached. Each is told on ``alerts/{key}``.
    audiences: tuple[str, ...] = ()
    area_chain: bool = True  # it was told to the area chain, so it escalates up that chain

    @model_validator(mode="before")
    @classmethod
    def _audiences_of_old_alerts(cls, data: Any) -> Any:
        """An alert stored before audiences existed was told to its grid up to its level."""
        if (
            isinstance(data, dict)
            and "audiences" not in data
            and isinstance(data.get("areas"), dict)
        ):
            order = [lv.value for lv in reversed(Level)]  # grid first
            top = str(data.get("escalation_level", Level.GRID.value))
            reached = order[: order.index(top) + 1] if top in order else order[:1]
            areas = {str(k): v for k, v in data["areas"].items()}
            data = {
                **data,
                "audiences": tuple(f"{lv}/{areas[lv]}" for lv in reached if lv in areas),
            }
        return data

    @property
    def topics(self) -> list[str]:
        """The MQTT topics that tell of it: ``alerts/{key}`` for every audience it has reached."""
        return [f"alerts/{key}" for key in self.audiences]


class AlertEvent(BaseModel):
    """A row of an alert's history."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    alert_id: str
    at_ms: int
    action: AlertAction
    actor: str | None = None
    detail: str = ""


def area_ids(path: AreaPath) -> dict[Level, str]:
    """A device's area path as the alert keeps it: level → area id, grid up to city."""
    return {area.level: area.id for area in path.areas}


def new_alert_id() -> str:
    """A short unique id, safe in URLs and topics."""
    return "A-" + secrets.token_hex(6)


def _first_audience(areas: dict[Level, str]) -> tuple[str, ...]:
    return (f"grid/{areas[Level.GRID]}",) if Level.GRID in areas else ()


def open_alert(
    *,
    rule_id: str,
    severity: Severity,
    device_id: str,
    kind: Kind,
    areas: dict[Level, str],
    at_ms: int,
    value: float | str | None,
    detail: str,
    flapping: bool = False,
    raised_ms: int | None = None,
    audiences: tuple[str, ...] | None = None,
    start_level: Level = Level.GRID,
    area_chain: bool = True,
) -> tuple[Alert, AlertEvent]:
    """A new open alert and its first history row (``raised_ms``: wall clock, default at_ms).

    ``audiences`` (rules/audiences.py): who is told first; default the device's grid cell.
    ``start_level``: where its area chain starts, and so where escalation climbs from."""
    alert = Alert(
        id=new_alert_id(),
        rule_id=rule_id,
        severity=severity,
        device_id=device_id,
        kind=kind,
        areas=areas,
        opened_ms=at_ms,
        updated_ms=at_ms,
        value=value,
        detail=detail,
        flapping=flapping,
        raised_ms=at_ms if raised_ms is None else raised_ms,
        audiences=_first_audience(areas) if audiences is None else audiences,
        escalation_level=start_level,
        area_chain=area_chain,
    )
    return alert, AlertEvent(
        alert_id=alert.id, at_ms=at_ms, action=AlertAction.OPENED, detail=detail
    )


def _not_resolved(alert: Alert, step: str) -> None:
    if alert.state is AlertState.RESOLVED:
        raise InvalidTransition(f"alert {alert.id} is resolved; it cannot be {step}")


def repeat(
    alert: Alert, at_ms: int, value: float | str | None, detail: str
) -> tuple[Alert, AlertEvent]:
    """The condition fired again while the alert is not resolved: count it, keep one alert."""
    _not_resolved(alert, "repeated")
    updated = alert.model_copy(
        update={
            "repeat_count": alert.repeat_count + 1,
            "updated_ms": max(alert.updated_ms, at_ms),
            "value": value,
            "detail": detail,
        }
    )
    return updated, AlertEvent(
        alert_id=alert.id, at_ms=at_ms, action=AlertAction.REPEATED, detail=detail
    )


def mark_flapping(alert: Alert, at_ms: int, detail: str) -> tuple[Alert, AlertEvent]:
    """Flap suppression held a clear back: the alert stays open and says it is flapping.

    Not a repeat (the count and the triggering value stay as they were); the detail says why.
    """
    _not_resolved(alert, "marked flapping")
    updated = alert.model_copy(
        update={"flapping": True, "updated_ms": max(alert.updated_ms, at_ms), "detail": detail}
    )
    return updated, AlertEvent(
        alert_id=alert.id, at_ms=at_ms, action=AlertAction.FLAPPING, detail=detail
    )


def acknowledge(
    alert: Alert, actor: str, at_ms: int, note: str | None = None
) -> tuple[Alert, AlertEvent]:
    """Someone has taken it on: it stops escalating."""
    _not_resolved(alert, "acknowledged")
    if alert.state is AlertState.ACKNOWLEDGED:
        raise InvalidTransition(
            f"alert {alert.id} is already acknowledged by {alert.acknowledged_by}"
        )
    updated = alert.model_copy(
        update={
            "state": AlertState.ACKNOWLEDGED,
            "acknowledged_ms": at_ms,
            "acknowledged_by": actor,
            "updated_ms": max(alert.updated_ms, at_ms),
            "note": note or alert.note,
        }
    )
    return updated, AlertEvent(
        alert_id=alert.id,
        at_ms=at_ms,
        action=AlertAction.ACKNOWLEDGED,
        actor=actor,
        detail=note or "",
    )


def resolve(
    alert: Alert, actor: str, at_ms: int, note: str | None = None
) -> tuple[Alert, AlertEvent]:
    """Closed by a person, or by the rule's clear condition (actor ``AUTO``)."""
    _not_resolved(alert, "resolved again")
    updated = alert.model_copy(
        update={
            "state": AlertState.RESOLVED,
            "resolved_ms": at_ms,
            "resolved_by": actor,
            "updated_ms": max(alert.updated_ms, at_ms),
            "note": note or alert.note,
        }
    )
    return updated, AlertEvent(
        alert_id=alert.id, at_ms=at_ms, action=AlertAction.RESOLVED, actor=actor, detail=note or ""
    )


def escalate(alert: Alert, at_ms: int) -> tuple[Alert, AlertEvent]:
    """Tell the next level up: grid → village → township → county → city."""
    if alert.state is not AlertState.OPEN:
        raise InvalidTransition(f"alert {alert.id} is {alert.state}; only open alerts escalate")
    if not alert.area_chain:
        raise InvalidTransition(f"alert {alert.id} was not told to the area chain; it stays")
    above = alert.escalation_level.parent_level
    if above is None or above not in alert.areas:
        raise InvalidTransition(
            f"alert {alert.id} is already at the top ({alert.escalation_level})"
        )
    key = f"{above.value}/{alert.areas[above]}"
    updated = alert.model_copy(
        update={
            "escalation_level": above,
            "audiences": (*alert.audiences, key) if key not in alert.audiences else alert.audiences,
            "escalated_ms": at_ms,
            "updated_ms": max(alert.updated_ms, at_ms),
        }
    )
    return updated, AlertEvent(
        alert_id=alert.id,
        at_ms=at_ms,
        action=AlertAction.ESCALATED,
        detail=f"to {above.value} {alert.areas[above]}",
    )


def due_for_escalation(alert: Alert, escalate_after_ms: int | None, now_ms: int) -> bool:
    """Open, unacknowledged, below the city, and ``escalate_after`` since it last moved up."""
    if escalate_after_ms is None or alert.state is not AlertState.OPEN or not alert.area_chain:
        return False
    above = alert.escalation_level.parent_level
    if above is None or above not in alert.areas:
        return False
    since = next(t for t in (alert.escalated_ms, alert.raised_ms, alert.opened_ms) if t is not None)
    return now_ms - since >= escalate_after_ms
