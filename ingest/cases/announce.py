"""What tells people of a case's step over MQTT: the topics and the bilingual lines.

The messages are written into the alert store's outbox (``announcements``) in the step's own
transaction, and the alert publisher sends them (ingest/alerts/outbox.py): at least once, a
crash after the commit loses none. Topics:

- ``cases/person/{username}``: the assignee if a person, the reporter if a person, the handler;
- ``cases/department/{dept}/{area}``: a department unit the case is dispatched to;
- ``cases/grid/{grid}``: the case's grid, always; once supervised, also
  ``cases/{level}/{area}`` of the supervising level.

Payload: ``{"case", "event", "message_zh", "message_en"}`` (the case with ``overdue``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

from devices.kinds import Level
from devices.registry import Registry
from ingest.alerts.transaction import wall_ms
from ingest.cases.views import view
from rules.cases import Case, CaseAction, CaseEvent, parse_assignee
from rules.model import Severity

# A topic level we build from stored names: no MQTT wildcards, separators or control chars.
_LEVEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_SEVERITY_ZH = {
    Severity.INFO: "一般",
    Severity.WARNING: "较重",
    Severity.MAJOR: "重大",
    Severity.CRITICAL: "紧急",
}
_ACTION_ZH = {
    CaseAction.FILED: "立案",
    CaseAction.DISPATCHED: "派遣",
    CaseAction.ACCEPTED: "受理",
    CaseAction.ARRIVED: "到场",
    CaseAction.HANDLED: "处置",
    CaseAction.VERIFIED: "核查通过",
    CaseAction.SENT_BACK: "退回重办",
    CaseAction.CLOSED: "结案",
    CaseAction.SUPERVISED: "超时督办",
}
_ACTION_EN = {
    CaseAction.FILED: "filed",
    CaseAction.DISPATCHED: "dispatched",
    CaseAction.ACCEPTED: "accepted",
    CaseAction.ARRIVED: "on site",
    CaseAction.HANDLED: "handled",
    CaseAction.VERIFIED: "verified",
    CaseAction.SENT_BACK: "sent back",
    CaseAction.CLOSED: "closed",
    CaseAction.SUPERVISED: "overdue, supervised",
}
_PLACE_LEVELS = (Level.COUNTY, Level.TOWNSHIP, Level.VILLAGE, Level.GRID)


def _safe(*parts: str) -> bool:
    return all(_LEVEL.fullmatch(p) for p in parts)


def case_topics(case: Case) -> list[str]:
    """Where a change of ``case`` is told, each topic once, in a fixed order."""
    topics: list[str] = []
    people = []
    if case.assignee is not None:
        kind, first, second = parse_assignee(case.assignee)
        if kind == "person":
            people.append(first)
        elif _safe(first, second):
            topics.append(f"cases/department/{first}/{second}")
    people += [p for p in (case.reporter_person, case.handler) if p is not None]
    topics += [f"cases/person/{p}" for p in people if _safe(p)]
    grid = case.areas.get(Level.GRID)
    if grid is not None and _safe(grid):
        topics.append(f"cases/grid/{grid}")
    if case.supervised and case.supervision_level is not None:
        area = case.areas.get(case.supervision_level)
        if area is not None and _safe(area):
            topics.append(f"cases/{case.supervision_level.value}/{area}")
    return list(dict.fromkeys(topics))


def _place(case: Case, registry: Registry) -> tuple[str, str]:
    areas = [registry.areas.get(case.areas[lv]) for lv in _PLACE_LEVELS if lv in case.areas]
    known = [a for a in areas if a is not None]
    zh: list[str] = []
    for name in (a.name for a in known):  # "X社区", "X社区第一网格" → the second alone
        if zh and name.startswith(zh[-1]):
            zh[-1] = name
        else:
            zh.append(name)
    en = ", ".join(reversed([a.name_en or a.name for a in known]))
    return "".join(zh), en


def describe_case(case: Case, event: CaseEvent, registry: Registry) -> tuple[str, str]:
    """(Chinese, English) lines for ``event`` of ``case``, naming the place and what to do."""
    place_zh, place_en = _place(case, registry)
    who_zh = f"（{event.actor}）" if event.actor else ""
    who_en = f" by {event.actor}" if event.actor else ""
    detail = f" {event.detail}" if event.detail else ""
    zh = (
        f"【{_SEVERITY_ZH[case.severity]}案件·{_ACTION_ZH[event.action]}{who_zh}】"
        f"{case.title}：{place_zh}（{case.id}）。{event.detail}"
    ).rstrip()
    en = (
        f"[{case.severity.value} case · {_ACTION_EN[event.action]}{who_en}] {case.title}: "
        f"{place_en} ({case.id}).{detail}"
    )
    return zh, en


def case_messages(
    changes: Sequence[tuple[Case, CaseEvent]], registry: Registry, now_ms: int | None = None
) -> list[tuple[str, bytes]]:
    """The (topic, payload) rows that tell of ``changes``, for the outbox."""
    now = wall_ms() if now_ms is None else now_ms
    rows: list[tuple[str, bytes]] = []
    for case, event in changes:
        zh, en = describe_case(case, event, registry)
        payload = json.dumps(
            {
                "case": view(case, now).model_dump(mode="json"),
                "event": event.model_dump(mode="json"),
                "message_zh": zh,
                "message_en": en,
            },
            ensure_ascii=False,
        ).encode()
        rows += [(topic, payload) for topic in case_topics(case)]
    return rows
