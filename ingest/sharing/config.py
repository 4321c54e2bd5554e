"""The sharing file (``config/sharing.yaml``, ``CITYSENSE_SHARING``): which data sets other
departments may read, under the city's rules for sharing government data resources
(政务信息资源共享管理办法).

Each data set has a class: ``unconditional`` (无条件共享: every department, in its own areas),
``conditional`` (有条件共享: only under an approved grant that has not expired) or
``not_shared`` (不予共享), and optionally the fields that may leave (gate events without
``plate_hash``). A grant names the department, its data sets, the areas, optionally fewer
fields, who approved it and the last day it is valid. A data set the file does not list is not
shared.

Read strictly like every operator file (unknown keys are problems) and checked against the
registry (departments, areas); every problem names the file, the entry and the field
(devices/problems.py). ``SharingFile`` is the running service's view: re-read within a second
of a change, and a file that no longer loads shares nothing (fail closed).
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import date
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from devices.kinds import Channel, Kind
from devices.payloads import SCHEMAS
from devices.problems import FileProblems, Problem, entry_name
from devices.registry import AreaId, Registry
from devices.responsibility import DepartmentId

log = logging.getLogger(__name__)


class SharingClass(StrEnum):
    """How a data set may be shared."""

    UNCONDITIONAL = "unconditional"  # 无条件共享
    CONDITIONAL = "conditional"  # 有条件共享: an approved, unexpired grant
    NOT_SHARED = "not_shared"  # 不予共享


class DataSet(StrEnum):
    """What a department may ask for: a kind's telemetry, a kind's events, the alerts."""

    RIVER = "river"
    GATE = "gate"
    ROAD = "road"
    GATE_EVENTS = "gate_events"
    ROAD_EVENTS = "road_events"
    ALERTS = "alerts"


def telemetry_set(kind: Kind) -> DataSet:
    """The data set of a kind's telemetry."""
    return DataSet(kind.value)


def events_set(kind: Kind) -> DataSet | None:
    """The data set of a kind's events; None for a kind without events (river)."""
    return DataSet(f"{kind.value}_events") if (kind, Channel.EVENT) in SCHEMAS else None


def known_fields(data_set: DataSet) -> frozenset[str]:
    """The fields a data set's rows carry, as stored (a plate only as ``plate_hash``)."""
    if data_set is DataSet.ALERTS:
        return frozenset()  # alerts are shared whole or not at all
    kind = Kind(data_set.value.removesuffix("_events"))
    channel = Channel.EVENT if data_set.value.endswith("_events") else Channel.TELEMETRY
    names = set(SCHEMAS[(kind, channel)].model_fields) - {"ts", "event"}
    if "plate" in names:
        names = (names - {"plate"}) | {"plate_hash"}
    return frozenset(names)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class SetRule(_Strict):
    """One data set's class, and what of it may be shared."""

    sharing: SharingClass = Field(alias="class")
    fields: tuple[str, ...] | None = Field(None, description="none: every field of the set")
    kinds: tuple[Kind, ...] | None = Field(None, description="alerts only: of devices of these")
    basis: str | None = Field(None, max_length=200, description="the rule it rests on, for people")


class Grant(_Strict):
    """An approved grant of conditional data sets to one department."""

    id: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
    department: DepartmentId
    data_sets: tuple[DataSet, ...] = Field(min_length=1)
    areas: tuple[AreaId, ...] = Field(min_length=1)
    fields: tuple[str, ...] | None = Field(None, description="none: what the data set shares")
    approved_by: str = Field(min_length=1, max_length=64)
    expires: date = Field(description="the last day (Asia/Shanghai) the grant is valid")


class SharingRules(_Strict):
    """What the sharing file holds, checked."""

    data_sets: dict[DataSet, SetRule] = Field(default_factory=dict)
    grants: tuple[Grant, ...] = ()

    def rule(self, data_set: DataSet) -> SetRule:
        """The data set's rule; a set the file does not list is not shared."""
        return self.data_sets.get(data_set) or SetRule(sharing=SharingClass.NOT_SHARED)


class SharingError(FileProblems):
    """A sharing file that cannot be used; ``problems`` lists everything found."""

    what = "the sharing file"


def _check_set(file: str, entry: str, ds: DataSet, rule: SetRule, out: list[Problem]) -> None:
    known = known_fields(ds)
    for j, f in enumerate(rule.fields or ()):
        if ds is DataSet.ALERTS:
            out.append(Problem(file, entry, "fields", "alerts are shared whole: no fields"))
            break
        if f not in known:
            out.append(Problem(file, entry, f"fields.{j}", f"{ds} has no field {f!r}"))
    if rule.kinds is not None and ds is not DataSet.ALERTS:
        out.append(Problem(file, entry, "kinds", "only the alerts data set takes kinds"))


def _check_grant(
    file: str, entry: str, g: Grant, rules: dict[DataSet, SetRule], registry: Registry
) -> list[Problem]:
    out: list[Problem] = []
    dept = registry.departments.get(g.department)
    if dept is None:
        out.append(Problem(file, entry, "department", f"no department {g.department!r}"))
    for j, ds in enumerate(g.data_sets):
        cls = rules.get(ds, SetRule(sharing=SharingClass.NOT_SHARED)).sharing
        if cls is not SharingClass.CONDITIONAL:
            out.append(Problem(file, entry, f"data_sets.{j}", f"{ds} is {cls}: no grant applies"))
    for j, area in enumerate(g.areas):
        if area not in registry.areas:
            out.append(Problem(file, entry, f"areas.{j}", f"no area {area!r}"))
        elif dept is not None and not {a.id for a in registry.path_of(area).areas} & set(
            dept.areas
        ):
            out.append(Problem(file, entry, f"areas.{j}", f"{area} is not in {dept.id}'s areas"))
    known = frozenset().union(*(known_fields(ds) for ds in g.data_sets))
    for j, f in enumerate(g.fields or ()):
        if f not in known:
            out.append(Problem(file, entry, f"fields.{j}", f"none of its data sets has {f!r}"))
    return out


def parse_sharing(data: Any, registry: Registry, file: str = "<sharing>") -> SharingRules:
    """The rules from parsed YAML; SharingError listing every problem."""
    if not isinstance(data, dict):
        raise SharingError([Problem(file, "(top)", "(file)", "must be a mapping")])
    problems = [
        Problem(file, "(top)", str(k), "unknown section")
        for k in data
        if k not in ("data_sets", "grants")
    ]
    sets: dict[DataSet, SetRule] = {}
    raw_sets = data.get("data_sets") or {}
    if not isinstance(raw_sets, dict):
        problems.append(Problem(file, "data_sets", "(section)", "must be a mapping"))
        raw_sets = {}
    for name, raw in raw_sets.items():
        entry = f"data_sets.{name}"
        if name not in DataSet.__members__.values():
            known = ", ".join(DataSet)
            problems.append(Problem(file, entry, "(key)", f"no data set {name!r} ({known})"))
            continue
        try:
            rule = SetRule.model_validate(raw)
        except ValidationError as e:
            for err in e.errors(include_url=False):
                where = ".".join(str(p) for p in err["loc"]) or "(entry)"
                problems.append(Problem(file, entry, where, err["msg"]))
            continue
        _check_set(file, entry, DataSet(name), rule, problems)
        sets[DataSet(name)] = rule
    grants: list[Grant] = []
    raw_grants = data.get("grants") or []
    if not isinstance(raw_grants, list):
        problems.append(Problem(file, "grants", "(section)", "must be a list"))
        raw_grants = []
    for i, raw in enumerate(raw_grants):
        entry = entry_name("grants", i, raw)
        try:
            grant = Grant.model_validate(raw)
        except ValidationError as e:
            for err in e.errors(include_url=False):
                where = ".".join(str(p) for p in err["loc"]) or "(entry)"
                problems.append(Problem(file, entry, where, err["msg"]))
            continue
        if any(g.id == grant.id for g in grants):
            problems.append(Problem(file, entry, "id", "duplicate grant id"))
        problems += _check_grant(file, entry, grant, sets, registry)
        grants.append(grant)
    if problems:
        raise SharingError(problems)
    return SharingRules(data_sets=sets, grants=tuple(grants))


def load_sharing(path: Path, registry: Registry) -> SharingRules:
    """Load and check a sharing file; SharingError naming the file, entry and field."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise SharingError([Problem(str(path), "(file)", "(yaml)", str(e))]) from None
    except UnicodeDecodeError as e:
        raise SharingError([Problem(str(path), "(file)", "(read)", f"not UTF-8: {e}")]) from None
    except OSError as e:
        raise SharingError([Problem(str(path), "(file)", "(read)", e.strerror or str(e))]) from None
    return parse_sharing(data, registry, str(path))


CHECK_EVERY_S = 1.0  # a change to the sharing file takes effect within about this long


class SharingFile:
    """The sharing file of a running service, re-read when it changes (looked at no more than
    once a second). A missing file shares nothing; a file that no longer loads shares nothing
    either (fail closed: a revocation typed next to a typo must not leave the data flowing),
    logged and kept as ``problem``."""

    def __init__(self, path: Path, registry: Registry) -> None:
        self.path = path
        self.registry = registry
        self._lock = threading.Lock()
        self._signature: tuple[int, int, int] | None = (-1, -1, -1)  # never a file's: read now
        self._rules: SharingRules | None = None
        self.problem: str | None = None
        self._load()
        self._checked = time.monotonic()

    def _load(self) -> None:
        signature = _signature(self.path)
        if signature == self._signature:
            return
        self._signature = signature
        if signature is None:
            self._rules, self.problem = None, f"{self.path}: no such file: nothing is shared"
            log.warning("%s", self.problem)
            return
        try:
            self._rules, self.problem = load_sharing(self.path, self.registry), None
            log.info("sharing file read: %d grant(s)", len(self._rules.grants))
        except SharingError as e:
            self._rules, self.problem = None, str(e)
            log.error("the sharing file cannot be used, nothing is shared: %s", e)

    def current(self) -> SharingRules | None:
        """The rules as the file says now; None when there are none to go by (share nothing)."""
        now = time.monotonic()
        if now - self._checked >= CHECK_EVERY_S:
            with self._lock:
                if now - self._checked >= CHECK_EVERY_S:
                    self._load()
                    self._checked = now
        return self._rules


def _signature(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)
