"""Who answers for what beside the grid (docs/rules.md "Who hears an alert"): rivers cut into
segments (河段) each with its river chief (河长) and river police chief (河警长), roads cut into
segments each with its road chief (路长), and departments (部门) with a unit in each area they
cover. The ``rivers``, ``roads`` and ``departments`` sections of the registry file.

The people who hold these posts are in the people file (``config/workers.yaml``); here is only
the structure they are posted to, so the rules can say "the chief of this station's segment"
without knowing who that is today. Checked at load against the areas and the devices, every
problem named by file, entry and field.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from devices.kinds import Level
from devices.problems import Problem
from devices.topics import ID_PATTERN

SegmentId = Annotated[str, Field(pattern=f"^{ID_PATTERN}$")]
DepartmentId = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
_AreaId = Annotated[str, Field(pattern=f"^{ID_PATTERN}$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DepartmentKind(StrEnum):
    """The functional departments of 一网统管 (横向联通), at least these six."""

    WATER_RESOURCES = "water_resources"  # 水利局
    FLOOD_CONTROL = "flood_control"  # 防汛抗旱指挥部
    ECOLOGY_ENVIRONMENT = "ecology_environment"  # 生态环境局
    TRAFFIC_POLICE = "traffic_police"  # 交警大队
    EMERGENCY_MANAGEMENT = "emergency_management"  # 应急管理局
    URBAN_MANAGEMENT = "urban_management"  # 城市管理局
    OTHER = "other"


class Segment(_Strict):
    """A stretch of a river or road, answered for by the chief of ``area`` (at ``level``)."""

    id: SegmentId
    name: str = Field(min_length=1, max_length=64)
    name_en: str | None = Field(None, max_length=128)
    level: Level  # county / township / village chief (县级/乡级/村级河长, 路长)
    area: _AreaId  # the area whose chief answers for it; at ``level``
    from_km: float = Field(ge=0, le=10_000)  # along the river (downstream) or the road
    to_km: float = Field(ge=0, le=10_000)
    # Rivers: how long a flood wave (or a pollutant) takes through the whole segment, in
    # minutes (rules/alongriver.py); from the hydrology office's routing, not from the length.
    travel_min: float | None = Field(None, gt=0, le=10_080)
    # Roads: the free-flow speed (km/h) its congestion index compares against (rules/congestion.py);
    # by default the lowest speed limit of its cameras.
    free_flow_kmh: float | None = Field(None, gt=0, le=200)

    @model_validator(mode="after")
    def _ordered(self) -> Segment:
        if not self.from_km < self.to_km:
            raise ValueError("need from_km < to_km")
        return self


class River(_Strict):
    """A river and its segments, upstream first. ``name`` is what its stations' ``river`` says."""

    id: SegmentId
    name: str = Field(min_length=1, max_length=64)
    name_en: str | None = Field(None, max_length=128)
    segments: tuple[Segment, ...] = Field(min_length=1)


class Road(_Strict):
    """A road and its segments. ``name`` is what its cameras' ``road`` says."""

    id: SegmentId
    name: str = Field(min_length=1, max_length=64)
    name_en: str | None = Field(None, max_length=128)
    road_class: Level  # a county, township or village road (县道/乡道/村道)
    segments: tuple[Segment, ...] = Field(min_length=1)


class Department(_Strict):
    """A department with a unit in each of ``areas`` (all at ``level``): the county flood HQ of
    each county is one department with three units."""

    id: DepartmentId
    name: str = Field(min_length=1, max_length=64)
    name_en: str | None = Field(None, max_length=128)
    kind: DepartmentKind
    level: Level
    areas: tuple[_AreaId, ...] = Field(min_length=1)


def unit_key(department: Department, area_id: str) -> str:
    """The audience key of one unit of a department: ``department/{id}/{area}``."""
    return f"department/{department.id}/{area_id}"


def check_ways(
    file: str,
    section: str,
    ways: Sequence[tuple[int, River | Road]],
    areas: Mapping[str, Any],
    problems: list[Problem],
    seen_segments: dict[str, str],
) -> None:
    """Ids unique, segments ordered along the way and not overlapping, each in an area of its
    level. ``seen_segments`` (segment id → way) is shared between rivers and roads: a device
    names its segment by id alone."""
    seen_ways: set[str] = set()
    for i, way in ways:
        entry = f"{section}[{i}] (id={way.id})"
        if way.id in seen_ways:
            problems.append(Problem(file, entry, "id", f"duplicate {section[:-1]} id"))
        seen_ways.add(way.id)
        end = None
        for j, seg in enumerate(way.segments):
            where = f"segments.{j}"
            if seg.id in seen_segments:
                problems.append(
                    Problem(
                        file,
                        entry,
                        f"{where}.id",
                        f"segment {seg.id} is already in {seen_segments[seg.id]}",
                    )
                )
            seen_segments[seg.id] = way.id
            if end is not None and seg.from_km < end:
                problems.append(
                    Problem(
                        file,
                        entry,
                        f"{where}.from_km",
                        f"overlaps the segment before "
                        f"(ends at {end:g} km); list segments upstream/first first",
                    )
                )
            end = seg.to_km
            area = areas.get(seg.area)
            if area is None:
                problems.append(Problem(file, entry, f"{where}.area", f"no area {seg.area!r}"))
            elif area.level is not seg.level:
                problems.append(
                    Problem(
                        file,
                        entry,
                        f"{where}.area",
                        f"{seg.area} is a {area.level}, the segment's chief is at {seg.level}",
                    )
                )


def check_departments(
    file: str,
    departments: Sequence[tuple[int, Department]],
    areas: Mapping[str, Any],
    problems: list[Problem],
) -> None:
    """Ids unique; each unit's area exists, at the department's level, listed once."""
    seen: set[str] = set()
    for i, dept in departments:
        entry = f"departments[{i}] (id={dept.id})"
        if dept.id in seen:
            problems.append(Problem(file, entry, "id", "duplicate department id"))
        seen.add(dept.id)
        for j, area_id in enumerate(dept.areas):
            area = areas.get(area_id)
            if area is None:
                problems.append(Problem(file, entry, f"areas.{j}", f"no area {area_id!r}"))
            elif area.level is not dept.level:
                problems.append(
                    Problem(
                        file,
                        entry,
                        f"areas.{j}",
                        f"{area_id} is a {area.level}, the department's units are at {dept.level}",
                    )
                )
            if area_id in dept.areas[:j]:
                problems.append(Problem(file, entry, f"areas.{j}", f"{area_id} is listed twice"))


def check_segment(
    file: str,
    entry: str,
    device: Any,
    ways: Mapping[str, River | Road],
    areas: Mapping[str, Any],
    problems: list[Problem],
) -> None:
    """A device's segment is on its own river (road), and the device lies in the segment's area."""
    if getattr(device, "segment", None) is None:
        return
    what = "river" if hasattr(device, "river") else "road"
    way = next((w for w in ways.values() if any(s.id == device.segment for s in w.segments)), None)
    if way is None:
        problems.append(Problem(file, entry, "segment", f"no {what} segment {device.segment!r}"))
        return
    if way.name != getattr(device, what):
        problems.append(
            Problem(
                file,
                entry,
                "segment",
                f"{device.segment} is on {way.name}, the device's "
                f"{what} is {getattr(device, what)}",
            )
        )
    segment = next(s for s in way.segments if s.id == device.segment)
    if device.km is not None and not segment.from_km <= device.km <= segment.to_km:
        problems.append(
            Problem(
                file,
                entry,
                "km",
                f"km {device.km:g} is outside its segment {segment.id} "
                f"({segment.from_km:g}-{segment.to_km:g} km)",
            )
        )
    chain, current = [], device.grid
    while current is not None and current in areas and current not in chain:
        chain.append(current)
        current = areas[current].parent
    if segment.area not in chain:
        problems.append(
            Problem(
                file,
                entry,
                "segment",
                f"{device.segment} is answered for in "
                f"{segment.area}; the device's grid {device.grid} is not inside it",
            )
        )
