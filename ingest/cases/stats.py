"""Case statistics for the command centre's 考核 (assessment): by department or by area.

For each group: cases per state, the total, the on-time rate (cases handled or later that were
never supervised, over all cases handled or later), the median time to handle (first handled −
first dispatched, in seconds), and how many times cases were sent back.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from enum import StrEnum

from pydantic import BaseModel

from devices.kinds import Level
from devices.registry import Registry
from rules.cases import Case, CaseState

NONE_KEY = "-"  # cases not dispatched to a department (or with no area at the level)
DONE = frozenset({CaseState.HANDLED, CaseState.VERIFIED, CaseState.CLOSED})


class GroupBy(StrEnum):
    """What statistics are grouped by."""

    DEPARTMENT = "department"
    AREA = "area"


class CaseGroup(BaseModel):
    """The statistics of one group of cases."""

    key: str
    name: str
    by_state: dict[CaseState, int]
    total: int
    on_time_rate: float | None  # None: nothing handled yet
    median_handle_s: float | None  # None: nothing dispatched and handled yet
    sent_back: int  # times sent back, summed over the group's cases


def _key(case: Case, by: GroupBy, level: Level) -> str:
    if by is GroupBy.DEPARTMENT:
        return case.department or NONE_KEY
    return case.areas.get(level, NONE_KEY)


def _name(key: str, by: GroupBy, registry: Registry) -> str:
    if key == NONE_KEY:
        return "未派至部门" if by is GroupBy.DEPARTMENT else "—"
    if by is GroupBy.DEPARTMENT:
        dept = registry.departments.get(key)
        return dept.name if dept is not None else key
    area = registry.areas.get(key)
    return area.name if area is not None else key


def group(cases: Iterable[Case], by: GroupBy, level: Level, registry: Registry) -> list[CaseGroup]:
    """The groups of ``cases``, by key."""
    members: dict[str, list[Case]] = {}
    for case in cases:
        members.setdefault(_key(case, by, level), []).append(case)
    out = []
    for key in sorted(members):
        these = members[key]
        by_state = {state: 0 for state in CaseState}
        for case in these:
            by_state[case.state] += 1
        done = [c for c in these if c.state in DONE]
        times = [
            (c.handled_ms - c.dispatched_ms) / 1000
            for c in these
            if c.handled_ms is not None and c.dispatched_ms is not None
        ]
        out.append(
            CaseGroup(
                key=key,
                name=_name(key, by, registry),
                by_state=by_state,
                total=len(these),
                on_time_rate=(
                    sum(1 for c in done if not c.supervised) / len(done) if done else None
                ),
                median_handle_s=statistics.median(times) if times else None,
                sent_back=sum(c.sent_back_count for c in these),
            )
        )
    return out
