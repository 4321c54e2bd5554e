"""Cases from alerts: the rule's own filing (``case: auto``), inside the alert's transaction,
and an operator's decision (``POST /cases {"alert_id"}``).

The alert store calls ``CaseFiler`` through a callback the service hands it (``ingest.alerts``
never imports ``ingest.cases``): with the connection of the transaction that opened the alerts,
so an alert and its case, their history and their announcements commit together or not at all.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.engine import Connection

from devices.registry import Registry
from ingest.alerts.transaction import put_announcements
from ingest.cases.announce import case_messages
from ingest.cases.store import case_of_alert, insert_case
from rules.alerts import AUTO, Alert, AlertAction, AlertEvent
from rules.cases import Case, CaseDeadlines, CaseEvent, CaseSource, file_case
from rules.model import RuleSet


def case_from_alert(
    alert: Alert,
    rules: RuleSet,
    registry: Registry,
    *,
    reporter: str,
    at_ms: int,
    deadlines: CaseDeadlines,
    reporter_person: str | None = None,
    reporter_token: str | None = None,
) -> tuple[Case, CaseEvent]:
    """A new case for ``alert``: its rule, severity, device, areas and the device's place."""
    rule = rules.get(alert.rule_id)
    device = registry.devices.get(alert.device_id)
    rule_zh = rule.name_zh if rule is not None else alert.rule_id
    device_name = device.name if device is not None else alert.device_id
    return file_case(
        title=f"{rule_zh}：{device_name}",
        description=alert.detail,
        source=CaseSource.ALERT,
        severity=alert.severity,
        areas=dict(alert.areas),
        reporter=reporter,
        reporter_person=reporter_person,
        reporter_token=reporter_token,
        at_ms=at_ms,
        deadlines=deadlines,
        alert_id=alert.id,
        rule_id=alert.rule_id,
        device_id=alert.device_id,
        lat=device.lat if device is not None else None,
        lon=device.lon if device is not None else None,
    )


class CaseFiler:
    """The hook of the alert store's transaction: a case for each alert just opened whose rule
    says ``case: auto``. Call it as ``filer(conn, opened, rules, now_ms)``."""

    def __init__(self, deadlines: CaseDeadlines, registry: Registry) -> None:
        self._deadlines = deadlines
        self._registry = registry

    def __call__(
        self,
        conn: Connection,
        opened: Sequence[tuple[Alert, AlertEvent]],
        rules: RuleSet,
        now_ms: int,
    ) -> None:
        """Insert the cases, their history and their announcements in ``conn``'s transaction.
        Changes that are not an opening, rules that file no case, and alerts that already have
        one are passed over; returns nothing."""
        filed: list[tuple[Case, CaseEvent]] = []
        for alert, event in opened:
            if event.action is not AlertAction.OPENED:
                continue
            rule = rules.get(alert.rule_id)
            if rule is None or rule.case != "auto" or case_of_alert(conn, alert.id) is not None:
                continue
            new, first = case_from_alert(
                alert, rules, self._registry, reporter=AUTO, at_ms=now_ms, deadlines=self._deadlines
            )
            insert_case(conn, new, first)
            filed.append((new, first))
        if filed:
            put_announcements(conn, case_messages(filed, self._registry, now_ms))
