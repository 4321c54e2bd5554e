"""A critical alert nobody was reached for: after ``escalate_undelivered_after`` (10 min by
default) with every one of its deliveries still undelivered (pending, failed or expired), it
is escalated — once — in one transaction (``DeliveryStore.flag_undelivered``):

- a history row on the alert: action ``escalated``, detail ``undelivered: …`` (the alert
  lifecycle has no action of its own for it; the detail names it);
- the announcement of that row on ``alerts/operators`` (MQTT through the outbox, and the
  operators' own channel endpoints, if the channels' config gives ``operators`` any);
- the flag ``undelivered`` the API shows (``GET /deliveries?alert=``: ``undelivered: true``).

An alert acknowledged or resolved by then is not escalated (someone knew): it is only marked
as looked at, so it is not looked at again.
"""

from __future__ import annotations

import json
import logging

from ingest.delivery.store import DeliveryStore
from rules.alerts import Alert, AlertEvent

log = logging.getLogger(__name__)

OPERATORS_TOPIC = "alerts/operators"


def escalation_messages(alert: Alert, event: AlertEvent) -> list[tuple[str, bytes]]:
    """The announcement of an undelivered escalation, to the operators."""
    zh = (
        f"【紧急·未送达】告警 {alert.id}（{alert.rule_id}，{alert.device_id}）"
        "未能通过任何渠道送达责任人"
    )
    en = (
        f"[critical · undelivered] alert {alert.id} ({alert.rule_id} on {alert.device_id}) "
        "reached nobody on any channel"
    )
    payload = json.dumps(
        {
            "alert": alert.model_dump(mode="json"),
            "event": event.model_dump(mode="json"),
            "message_zh": zh,
            "message_en": en,
            "undelivered": True,
        },
        ensure_ascii=False,
    ).encode()
    return [(OPERATORS_TOPIC, payload)]


def escalate_undelivered(store: DeliveryStore, now_ms: int, after_s: float) -> list[str]:
    """Escalate every critical alert undelivered for ``after_s``; the ids escalated."""
    done = []
    for alert_id in store.undelivered_due(now_ms, round(after_s * 1000)):
        detail = (
            f"undelivered: no channel reached its audience within {after_s:.0f} s; "
            "told to operators"
        )
        if store.flag_undelivered(alert_id, now_ms, detail, escalation_messages) is not None:
            log.warning("critical alert %s reached nobody: escalated to the operators", alert_id)
            done.append(alert_id)
    return done
