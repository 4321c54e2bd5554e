"""The people of the city's duty system (``config/workers.yaml``): grid workers (网格员), river
chiefs (河长) and river police chiefs (河警长), road chiefs (路长) and department staff, each with
the posts they answer for, checked at load against the registry.

A post is an audience key (rules/audiences.py): ``grid/{area}`` (or any level), ``river_chief/
{segment}``, ``river_police/{segment}``, ``road_chief/{segment}``, ``department/{id}/{area}``,
plus ``person/{username}`` for what is addressed to them alone (a case dispatched to them). Each
person is a broker user reading ``alerts/{key}`` and ``cases/{key}`` of their posts only
(ingest/ops/brokerconfig.py), and may hold API tokens that see what their posts see
(``citysense tokens add USERNAME --person``).

Validated strictly (unknown keys are errors) and against the registry; every problem names
the file, the entry and the field.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from devices.kinds import Kind, Level
from devices.problems import FileProblems, Problem
from devices.registry import AreaId, Registry
from devices.responsibility import DepartmentId, SegmentId

log = logging.getLogger(__name__)

# A broker username: no ':' (the password file's separator), no whitespace (the ACL file's),
# no MQTT wildcard or level separator.
USERNAME_PATTERN = r"^[a-z][a-z0-9._-]{0,63}$"
Username = Annotated[str, Field(pattern=USERNAME_PATTERN)]
PERSON = "person"  # the audience family of what is addressed to one person


class Post(StrEnum):
    """What a person answers for."""

    GRID_WORKER = "grid_worker"  # the alerts of areas (any level: a township's duty officer)
    RIVER_CHIEF = "river_chief"
    RIVER_POLICE = "river_police"
    ROAD_CHIEF = "road_chief"
    DEPARTMENT = "department"  # staff of a department's units in ``areas``


_SEGMENT_KIND = {
    Post.RIVER_CHIEF: Kind.RIVER,
    Post.RIVER_POLICE: Kind.RIVER,
    Post.ROAD_CHIEF: Kind.ROAD,
}
_ORDER = list(Level)  # city first


class Person(BaseModel):
    """One person and their posts. ``role`` defaults to grid_worker: a workers file written
    before the other posts existed reads as it did."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    username: Username
    name: str = Field(min_length=1, max_length=64)
    role: Post = Post.GRID_WORKER
    phone: str | None = Field(None, pattern=r"^\+?[0-9 -]{5,20}$")
    areas: tuple[AreaId, ...] = ()
    segments: tuple[SegmentId, ...] = ()
    department: DepartmentId | None = None

    @model_validator(mode="after")
    def _posts_fit_role(self) -> Person:
        if self.role in _SEGMENT_KIND:
            if not self.segments:
                raise ValueError(f"a {self.role} needs segments (one or more)")
            if self.areas or self.department:
                raise ValueError(f"a {self.role} answers for segments: no areas or department")
        elif self.segments:
            raise ValueError(f"a {self.role} has no segments")
        if self.role is Post.DEPARTMENT:
            if self.department is None or not self.areas:
                raise ValueError("department staff need a department and its areas")
        elif self.department is not None:
            raise ValueError(f"a {self.role} belongs to no department")
        if self.role is Post.GRID_WORKER and not self.areas:
            raise ValueError("a grid_worker needs areas (one or more)")
        return self

    @property
    def own_key(self) -> str:
        """The audience key of what is addressed to this person alone."""
        return f"{PERSON}/{self.username}"

    def posts(self, registry: Registry) -> list[str]:
        """The audience keys of their posts, in file order (not ``person/...``)."""
        if self.role is Post.GRID_WORKER:
            return [f"{registry.areas[a].level.value}/{a}" for a in self.areas]
        if self.role is Post.DEPARTMENT:
            return [f"department/{self.department}/{a}" for a in self.areas]
        return [f"{self.role.value}/{s}" for s in self.segments]

    def audiences(self, registry: Registry) -> list[str]:
        """Every key told to them: their posts, then their own."""
        return [*self.posts(registry), self.own_key]

    def alert_topics(self, registry: Registry) -> list[str]:
        """``alerts/{key}`` for each post: the alerts told to their posts."""
        return [f"alerts/{k}" for k in self.posts(registry)]

    def case_topics(self, registry: Registry) -> list[str]:
        """``cases/{key}`` for each post and their own: the cases told to them."""
        return [f"cases/{k}" for k in self.audiences(registry)]

    def view_areas(self, registry: Registry) -> list[str]:
        """The areas whose devices they may look at: their own, or their segments' areas."""
        if self.segments:
            return list(dict.fromkeys(registry.segments[s].area for s in self.segments))
        return list(self.areas)

    def level(self, registry: Registry) -> Level:
        """The highest level they work at; their superior is the level above (supervision)."""
        if self.role is Post.DEPARTMENT:
            return registry.departments[str(self.department)].level
        levels = (
            [registry.segments[s].level for s in self.segments]
            if self.segments
            else [registry.areas[a].level for a in self.areas]
        )
        return min(levels, key=_ORDER.index)

    def levels(self, registry: Registry) -> list[Level]:
        """The level of each of their areas, in file order."""
        return [registry.areas[a].level for a in self.areas]


class People:
    """The people file, by username."""

    def __init__(self, people: Iterable[Person] = ()) -> None:
        self.by_name: dict[str, Person] = {p.username: p for p in people}

    def __iter__(self) -> Iterator[Person]:
        return iter(self.by_name.values())

    def __len__(self) -> int:
        return len(self.by_name)

    def get(self, username: str) -> Person | None:
        """The person with this username, or None."""
        return self.by_name.get(username)

    def holding(self, key: str, registry: Registry) -> list[Person]:
        """Who holds the post ``key`` (or whose own key it is)."""
        return [p for p in self if key in p.audiences(registry)]


class WorkersError(FileProblems):
    """A people file that cannot be used; ``problems`` lists everything found."""

    what = "the people file"


def _entry_name(index: int, raw: Any) -> str:
    name = raw.get("username") if isinstance(raw, dict) else None
    return f"workers[{index}]" + (f" (username={name})" if name is not None else "")


def _check_person(
    file: str, entry: str, person: Person, registry: Registry, problems: list[Problem]
) -> None:
    for j, area in enumerate(person.areas):
        if area not in registry.areas:
            problems.append(Problem(file, entry, f"areas.{j}", f"no area {area!r}"))
        elif area in person.areas[:j]:
            problems.append(Problem(file, entry, f"areas.{j}", f"{area} is listed twice"))
    kind = _SEGMENT_KIND.get(person.role)
    ways = registry.rivers if kind is Kind.RIVER else registry.roads
    for j, seg in enumerate(person.segments):
        if not any(s.id == seg for w in ways.values() for s in w.segments):
            what = "river" if kind is Kind.RIVER else "road"
            problems.append(Problem(file, entry, f"segments.{j}", f"no {what} segment {seg!r}"))
    if person.department is not None:
        dept = registry.departments.get(person.department)
        if dept is None:
            problems.append(
                Problem(file, entry, "department", f"no department {person.department!r}")
            )
        else:
            for j, area in enumerate(person.areas):
                if area in registry.areas and area not in dept.areas:
                    problems.append(
                        Problem(file, entry, f"areas.{j}", f"{dept.id} has no unit in {area}")
                    )


def _check_posts_held(
    file: str, people: list[Person], registry: Registry, problems: list[Problem]
) -> None:
    """Every post a rule may address has someone in it (河长制: each segment answers to a named
    chief and police chief; each department unit has staff), once the file posts any chief
    or department staff; a file of grid workers alone (one written before they existed) is
    taken as it was, and its city's rules reach the grid."""
    if all(p.role is Post.GRID_WORKER for p in people):
        return
    held = {k for p in people for k in p.posts(registry)}
    wanted = [
        (f"{post.value}/{seg.id}", f"{way.name} segment {seg.id} has no {post.value}")
        for post, ways in (
            (Post.RIVER_CHIEF, registry.rivers),
            (Post.RIVER_POLICE, registry.rivers),
            (Post.ROAD_CHIEF, registry.roads),
        )
        for way in ways.values()
        for seg in way.segments
    ]
    wanted += [
        (f"department/{d.id}/{a}", f"department {d.id} has nobody for its unit in {a}")
        for d in registry.departments.values()
        for a in d.areas
    ]
    problems += [Problem(file, "(top)", "workers", why) for key, why in wanted if key not in held]


def parse_workers(data: Any, registry: Registry, file: str = "<workers>") -> tuple[Person, ...]:
    """Build the people from parsed YAML; raise WorkersError listing every problem."""
    if not isinstance(data, dict):
        raise WorkersError([Problem(file, "(top)", "(file)", "must be a mapping")])
    problems = [Problem(file, "(top)", str(k), "unknown section") for k in data if k != "workers"]
    raw = data.get("workers")
    if not isinstance(raw, list):
        raise WorkersError([*problems, Problem(file, "workers", "(section)", "must be a list")])
    people: list[Person] = []
    seen: set[str] = set()
    for i, item in enumerate(raw):
        entry = _entry_name(i, item)
        try:
            person = Person.model_validate(item)
        except ValidationError as e:
            for err in e.errors(include_url=False):
                where = ".".join(str(p) for p in err["loc"]) or "(entry)"
                problems.append(Problem(file, entry, where, err["msg"]))
            continue
        if person.username in seen:
            problems.append(Problem(file, entry, "username", "duplicate username"))
        seen.add(person.username)
        if person.username in registry.devices:
            # Devices authenticate as their id: one broker user cannot be both.
            problems.append(Problem(file, entry, "username", "is also a device id"))
        _check_person(file, entry, person, registry, problems)
        people.append(person)
    if not problems:
        _check_posts_held(file, people, registry, problems)
    if problems:
        raise WorkersError(problems)
    return tuple(people)


def load_workers(path: Path, registry: Registry) -> tuple[Person, ...]:
    """Load and check a people (workers) YAML file against ``registry``."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise WorkersError([Problem(str(path), "(file)", "(yaml)", str(e))]) from None
    except OSError as e:
        raise WorkersError([Problem(str(path), "(file)", "(read)", e.strerror or str(e))]) from None
    return parse_workers(data, registry, str(path))


def load_people(path: Path, registry: Registry) -> tuple[People, str | None]:
    """The people file for a running service, and what is wrong with it (None if nothing).

    The service does not refuse to start over it (alerts flow without anyone's token): a
    file with problems gives nobody, logged and shown in ``/ready``'s warnings, and a person's
    token is then refused. ``broker-config`` and ``stack up`` refuse such a file.
    """
    if not path.exists():
        return People(), None
    try:
        return People(load_workers(path, registry)), None
    except WorkersError as e:
        return People(), str(e)


CHECK_EVERY_S = 1.0  # a change to the people file takes effect within about this long


class PeopleFile:
    """The people file of a running service, re-read when it changes (looked at no more than
    once a second), so a person struck from it loses their token's access within a second.
    A file that no longer loads gives nobody (fail closed: an edit that removes someone must
    not keep them in because of a typo elsewhere), logged and kept as ``problem``."""

    def __init__(self, path: Path, registry: Registry) -> None:
        self.path = path
        self.registry = registry
        self._signature = _signature(path)
        self._people, self.problem = load_people(path, registry)
        self._checked = time.monotonic()

    def current(self) -> People:
        """The people as the file says now."""
        now = time.monotonic()
        if now - self._checked >= CHECK_EVERY_S:
            self._checked = now
            signature = _signature(self.path)
            if signature != self._signature:
                self._signature = signature
                self._people, self.problem = load_people(self.path, self.registry)
                if self.problem:
                    log.error("the people file changed and cannot be used: %s", self.problem)
                else:
                    log.info("people file re-read: %d people", len(self._people))
        return self._people

    def get(self, username: str) -> Person | None:
        """The person with this username now, or None."""
        return self.current().get(username)

    def holding(self, key: str, registry: Registry) -> list[Person]:
        """Who holds the post ``key`` now."""
        return self.current().holding(key, registry)


def _signature(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)
