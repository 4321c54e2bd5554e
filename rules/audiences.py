"""Who hears an alert (docs/rules.md "Who hears an alert"): a rule's ``notify`` list resolved for
one device into audience keys, each the suffix of an MQTT topic ``alerts/{key}``.

- ``grid`` → ``{start_level}/{area}``: the area chain, starting at ``start_level``
  (``grid/430502001001-01``, or ``county/430502`` for a rule that starts at the county);
  escalation adds the levels above (rules/alerts.py).
- ``river_chief`` / ``river_police`` → ``river_chief/{segment}``: the chief (police chief) of
  the station's river segment; ``road_chief`` → ``road_chief/{segment}`` for a camera's road.
- ``{department: id}`` → ``department/{id}/{area}``: the department's unit for the device's
  area at the department's level (the flood HQ of the device's county).

An audience that does not apply to a device (a station with no segment, a county the department
has no unit in) is skipped; if none applies, the grid hears it: an alert is never told to
nobody.
"""

from __future__ import annotations

from dataclasses import dataclass

from devices.kinds import Kind, Level
from devices.registry import AnyDevice, Registry
from devices.responsibility import unit_key
from rules.model import AnyRule, DepartmentAudience

__all__ = ["AUDIENCE_KIND", "Reach", "area_of", "reach"]

# The kind of device each chief answers for (a river chief hears nothing of a road camera).
AUDIENCE_KIND = {"river_chief": Kind.RIVER, "river_police": Kind.RIVER, "road_chief": Kind.ROAD}


@dataclass(frozen=True, slots=True)
class Reach:
    """Who an alert is first told to: its audience keys, and where its area chain starts
    (``chain`` False: the rule does not notify the area chain, so it never escalates)."""

    keys: tuple[str, ...]
    start_level: Level = Level.GRID
    chain: bool = True


def reach(rule: AnyRule, device: AnyDevice, registry: Registry) -> Reach:
    """The audiences of ``rule``'s alert on ``device``."""
    path = registry.device_path(device.id)
    keys: list[str] = []
    chain = False
    for audience in rule.notify:
        if isinstance(audience, DepartmentAudience):
            dept = registry.departments.get(audience.department)
            area = path.id_at(dept.level) if dept is not None else None
            if dept is not None and area in dept.areas:
                keys.append(unit_key(dept, area))
        elif audience == "grid":
            area = path.id_at(rule.start_level)
            if area is not None:
                keys.append(f"{rule.start_level.value}/{area}")
                chain = True
        elif (segment := getattr(device, "segment", None)) is not None and (
            AUDIENCE_KIND[audience] is device.kind
        ):
            keys.append(f"{audience}/{segment}")
    if not keys:
        return Reach((f"{Level.GRID.value}/{device.grid}",))
    return Reach(tuple(dict.fromkeys(keys)), rule.start_level if chain else Level.GRID, chain)


def area_of(key: str, registry: Registry) -> str | None:
    """The area an audience key answers for (a segment's chief area, a unit's area); None for a
    person's own key. Used to find the alerts a caller may see without reading every alert."""
    family, _, rest = key.partition("/")
    if family in ("river_chief", "river_police", "road_chief"):
        segment = registry.segments.get(rest)
        return None if segment is None else segment.area
    if family == "department":
        return rest.rpartition("/")[2] or None
    if family in {level.value for level in Level}:
        return rest or None
    return None
