"""Who a case can be dispatched to, and at what level they work: ``person/{username}`` (a person
of the people file) or ``department/{dept}/{area}`` (a unit of a registry department).

The people file is read elsewhere (ingest/people.py); here it is only something with
``get(username)`` whose people know their ``level(registry)``.
"""

from __future__ import annotations

from typing import Protocol

from devices.kinds import Level
from devices.registry import Registry
from devices.responsibility import unit_key
from rules.cases import Case


class _Person(Protocol):
    def level(self, registry: Registry) -> Level: ...


class PeopleBook(Protocol):
    """The people file, as far as cases need it."""

    def get(self, username: str) -> _Person | None: ...


class UnknownAssignee(ValueError):
    """Nobody by that key (the API answers 422 ``unknown_assignee``)."""


def resolve_assignee(
    to: str, case: Case, registry: Registry, people: PeopleBook | None
) -> tuple[str, Level]:
    """The full assignee key for ``to`` and the level the assignee works at.

    ``department/{dept}`` alone means the department's unit for the case's place (its area at
    the department's level).
    """
    parts = to.split("/")
    if len(parts) == 2 and parts[0] == "person":
        person = people.get(parts[1]) if people is not None else None
        if person is None:
            raise UnknownAssignee(f"no person {parts[1]!r} in the people file")
        return to, person.level(registry)
    if parts[0] == "department" and len(parts) in (2, 3):
        dept = registry.departments.get(parts[1])
        if dept is None:
            raise UnknownAssignee(f"no department {parts[1]!r} in the registry")
        area = parts[2] if len(parts) == 3 else case.areas.get(dept.level)
        if area is None or area not in dept.areas:
            where = area if len(parts) == 3 else "the case's place"
            raise UnknownAssignee(f"department {dept.id} has no unit for {where}")
        return unit_key(dept, area), dept.level
    raise UnknownAssignee(
        "an assignee is person/{username}, department/{id}/{area} or department/{id}"
    )
