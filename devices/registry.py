"""The registry of areas and devices (docs/operations.md), loaded from YAML and checked at load.

Operator files are validated strictly (unknown keys are errors) and every problem names the
file, the entry and the field, so a typo in a 500-device file is found in one read.

Why one module (over 400 lines): the device models and the checks across entries (ids, grids,
segments, protocol identities) are one file's grammar; a check that spans entries must see
every model it relates.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from devices.kinds import Kind, Level
from devices.problems import FileProblems, Problem, entry_name, problems_from
from devices.responsibility import (
    Department,
    River,
    Road,
    Segment,
    SegmentId,
    check_departments,
    check_segment,
    check_ways,
)
from devices.topics import ID_PATTERN

AreaId = Annotated[str, Field(pattern=f"^{ID_PATTERN}$")]
DeviceId = Annotated[str, Field(pattern=f"^{ID_PATTERN}$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Area(_Strict):
    """An administrative area or grid cell."""

    id: AreaId
    name: str = Field(min_length=1, max_length=64)
    name_en: str | None = Field(None, max_length=128)
    level: Level
    parent: AreaId | None = None


class _DeviceBase(_Strict):
    id: DeviceId
    name: str = Field(min_length=1, max_length=64)
    name_en: str | None = Field(None, max_length=128)
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)
    grid: AreaId
    report_interval_s: float = Field(60, gt=0, le=86_400)
    # The vendor's model: when config/vendors.yaml maps it, its JSON is read through that
    # mapping (devices/vendormap.py); a model with no mapping speaks our payloads.
    model: str | None = Field(None, pattern=f"^{ID_PATTERN}$")

    def attribute(self, name: str) -> float | None:
        """A numeric attribute that rules may reference, or None if this kind has none."""
        value = getattr(self, name, None)
        return float(value) if isinstance(value, int | float) else None


class GateDevice(_DeviceBase):
    """A community access gate or vehicle barrier."""

    kind: Literal[Kind.GATE]
    community: str = Field(min_length=1, max_length=64)
    gate_type: Literal["pedestrian", "vehicle"] = "pedestrian"


# Water classes of GB 3838-2002, as rules.waterquality.WaterClass.parse reads them (I, Ⅱ, 3,
# "IV类", "class V"), kept here as the plain name: devices must not import rules (rules import
# devices), and tests/unit/test_quality_assessment.py checks both read every spelling alike.
_ROMAN = {"Ⅰ": "I", "Ⅱ": "II", "Ⅲ": "III", "Ⅳ": "IV", "Ⅴ": "V"}
_CLASS_NAMES = {
    **{name: name for name in _ROMAN.values()},
    **_ROMAN,
    **{str(i): name for i, name in enumerate(_ROMAN.values(), start=1)},
}


def water_class_name(value: Any) -> str:
    """``"II"``, ``"Ⅱ"``, ``"2"``, ``"II类"`` or ``"class II"`` → ``"II"``; a target is I-V."""
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    if isinstance(text, str):
        key = text.strip().upper().removesuffix("类").removeprefix("CLASS").strip()
        if key in _CLASS_NAMES:
            return _CLASS_NAMES[key]
    raise ValueError(f"{value!r} is not a water class of GB 3838-2002 (I, II, III, IV or V)")


WaterClassName = Annotated[Literal["I", "II", "III", "IV", "V"], BeforeValidator(water_class_name)]


# How a station in the field reports when not in our MQTT JSON: through a citysense gateway
# (ingest/gateway/), which knows it by its identity in that protocol.
Protocol = Literal["hj212", "sl651"]
# HJ 212-2017 §6.3.2: MN is up to 24 letters or digits; PW is 6 characters, but analysers
# accept other lengths, so any printable run that cannot break the frame's grammar.
_MN = r"^[0-9A-Za-z]{1,24}$"
# Printable, none of ; , = & (the segment's separators) nor # (a frame starts with ##, so a
# stream split inside one would be cut there, and its password kept in a dead letter).
_HJ212_PW = r"^[!\x22\x24%'-+\--:<>-~]{1,32}$"
# SL 651-2014 §6.2.3.2: the station address is 5 bytes BCD (10 digits); §6.2.3.3: the
# password 2 bytes, written as 4 hex digits.
_STATION_ADDRESS = r"^[0-9]{10}$"
_SL651_PASSWORD = r"^[0-9A-Fa-f]{4}$"


class RiverDevice(_DeviceBase):
    """A river monitoring station with its flood levels (elevations, metres) and the water
    class its section must meet (水功能区目标, GB 3838-2002), if it has one.

    A station that reports in HJ 212 or SL 651 names its ``protocol`` and its identity there
    (``mn``, or ``station_address``) with its ``password``; the password is never dumped.
    """

    kind: Literal[Kind.RIVER]
    river: str = Field(min_length=1, max_length=64)
    segment: SegmentId | None = None  # its river segment (rivers:), whose chief answers for it
    km: float | None = Field(None, ge=0, le=10_000)  # where on its river (downstream), in km
    normal_level_m: float = Field(ge=-100, le=9000)
    warning_level_m: float = Field(ge=-100, le=9000)
    guarantee_level_m: float = Field(ge=-100, le=9000)
    target_class: WaterClassName | None = None  # water_quality rules with worse_than: target
    protocol: Protocol | None = None
    mn: str | None = Field(None, pattern=_MN)
    station_address: str | None = Field(None, pattern=_STATION_ADDRESS)
    password: SecretStr | None = Field(None, exclude=True, repr=False)

    @model_validator(mode="after")
    def _levels_ordered(self) -> RiverDevice:
        if not self.normal_level_m < self.warning_level_m < self.guarantee_level_m:
            raise ValueError("need normal_level_m < warning_level_m < guarantee_level_m")
        return self

    @model_validator(mode="after")
    def _identity(self) -> RiverDevice:
        wanted = {"hj212": "mn", "sl651": "station_address", None: None}[self.protocol]
        for name in ("mn", "station_address"):
            if name != wanted and getattr(self, name) is not None:
                raise ValueError(f"{name} belongs to protocol {_OWNER[name]}, not {self.protocol}")
        if wanted is None:
            if self.password is not None:
                raise ValueError("password needs a protocol (hj212 or sl651)")
            return self
        if getattr(self, wanted) is None or self.password is None:
            raise ValueError(f"protocol {self.protocol} needs {wanted} and password")
        pattern, rule = _PASSWORDS[str(self.protocol)]  # set: wanted is not None
        if not re.fullmatch(pattern, self.password.get_secret_value()):
            raise ValueError(f"password is not a {self.protocol} password: {rule}")
        return self

    @property
    def identity(self) -> str | None:
        """The station's identity in its protocol: HJ 212 MN or SL 651 station address."""
        return self.mn if self.protocol == "hj212" else self.station_address


_OWNER = {"mn": "hj212", "station_address": "sl651"}
_PASSWORDS = {
    "hj212": (_HJ212_PW, "1-32 printable characters, none of # & , ; ="),
    "sl651": (_SL651_PASSWORD, "4 hex digits"),
}


class RoadDevice(_DeviceBase):
    """A road camera on a rural road."""

    kind: Literal[Kind.ROAD]
    road: str = Field(min_length=1, max_length=64)
    segment: SegmentId | None = None  # its road segment (roads:), whose chief answers for it
    km: float | None = Field(None, ge=0, le=10_000)  # where on its road, in km
    speed_limit_kmh: float = Field(gt=0, le=200)
    lanes: int = Field(2, ge=1, le=16)


AnyDevice = GateDevice | RiverDevice | RoadDevice
Device = Annotated[GateDevice | RiverDevice | RoadDevice, Field(discriminator="kind")]
_DEVICE = TypeAdapter[GateDevice | RiverDevice | RoadDevice](Device)


class RegistryError(FileProblems):
    """A registry file that cannot be used; ``problems`` lists everything found."""

    what = "the registry"


@dataclass(frozen=True, slots=True)
class AreaPath:
    """The chain of areas above a grid cell, grid first."""

    areas: tuple[Area, ...]

    def id_at(self, level: Level) -> str | None:
        """The id of the area at ``level`` on this path."""
        return next((a.id for a in self.areas if a.level is level), None)

    def tags(self) -> dict[str, str]:
        """InfluxDB tags for the path: ``grid``, ``village``, ``township``, ``county``."""
        return {a.level.value: a.id for a in self.areas if a.level is not Level.CITY}


class Registry:
    """Areas and devices by id, with each device's area path resolved once at load; the rivers,
    roads and departments that answer for them (devices/responsibility.py)."""

    def __init__(
        self,
        areas: Iterable[Area],
        devices: Iterable[GateDevice | RiverDevice | RoadDevice],
        rivers: Iterable[River] = (),
        roads: Iterable[Road] = (),
        departments: Iterable[Department] = (),
    ):
        self.areas: dict[str, Area] = {a.id: a for a in areas}
        self.devices: dict[str, GateDevice | RiverDevice | RoadDevice] = {d.id: d for d in devices}
        self._paths = {d.id: self.path_of(d.grid) for d in self.devices.values()}
        self.rivers: dict[str, River] = {r.id: r for r in rivers}
        self.roads: dict[str, Road] = {r.id: r for r in roads}
        self.departments: dict[str, Department] = {d.id: d for d in departments}
        ways: list[River | Road] = [*self.rivers.values(), *self.roads.values()]
        self.segments: dict[str, Segment] = {s.id: s for way in ways for s in way.segments}

    def path_of(self, area_id: str) -> AreaPath:
        """The area and its ancestors, nearest first."""
        chain: list[Area] = []
        current: str | None = area_id
        while current is not None:
            area = self.areas[current]
            chain.append(area)
            current = area.parent
        return AreaPath(tuple(chain))

    def device_path(self, device_id: str) -> AreaPath:
        """The area path of a device's grid cell."""
        return self._paths[device_id]

    def devices_in(self, area_id: str) -> Iterator[GateDevice | RiverDevice | RoadDevice]:
        """Devices whose grid lies inside ``area_id`` (at any level)."""
        for device in self.devices.values():
            if any(a.id == area_id for a in self._paths[device.id].areas):
                yield device

    def segment_of(self, device_id: str) -> Segment | None:
        """The river or road segment a station or camera belongs to, if the registry says."""
        name = getattr(self.devices[device_id], "segment", None)
        return None if name is None else self.segments.get(name)

    def children(self, area_id: str) -> list[Area]:
        """Areas directly below ``area_id``."""
        return [a for a in self.areas.values() if a.parent == area_id]

    def stations_of(self, protocol: str) -> dict[str, RiverDevice]:
        """The stations reporting in ``protocol``, by their identity there (MN, address)."""
        return {
            d.identity: d
            for d in self.devices.values()
            if isinstance(d, RiverDevice) and d.protocol == protocol and d.identity is not None
        }


_KIND_TAGS = frozenset(k.value for k in Kind)
# The sections that say who answers for what beside the grid; each optional.
_DUTIES: dict[str, type[River] | type[Road] | type[Department]] = {
    "rivers": River,
    "roads": Road,
    "departments": Department,
}


def _parse_entries(
    file: str, section: str, raw: Any, parse: Any, problems: list[Problem]
) -> list[tuple[int, Any]]:
    """The entries that parse, each with its index in the file (problems name that index)."""
    if not isinstance(raw, list):
        problems.append(Problem(file, section, "(section)", "must be a list"))
        return []
    parsed = []
    for i, item in enumerate(raw):
        try:
            parsed.append((i, parse(item)))
        except ValidationError as e:
            problems.extend(
                problems_from(file, entry_name(section, i, item), e, _KIND_TAGS, "(entry)")
            )
    return parsed


def _check_areas(file: str, areas: list[tuple[int, Area]], problems: list[Problem]) -> None:
    by_id: dict[str, Area] = {}
    for i, area in areas:
        entry = f"areas[{i}] (id={area.id})"
        if area.id in by_id:
            problems.append(Problem(file, entry, "id", "duplicate area id"))
        by_id[area.id] = area
    for i, area in areas:
        entry = f"areas[{i}] (id={area.id})"
        expected = area.level.parent_level
        if expected is None:
            if area.parent is not None:
                problems.append(Problem(file, entry, "parent", "a city has no parent"))
            continue
        parent = by_id.get(area.parent) if area.parent else None
        if parent is None:
            problems.append(Problem(file, entry, "parent", f"no area {area.parent!r}"))
        elif parent.level is not expected:
            problems.append(
                Problem(
                    file,
                    entry,
                    "parent",
                    f"a {area.level} needs a {expected} parent, {parent.id} is a {parent.level}",
                )
            )


def _check_devices(
    file: str,
    devices: list[tuple[int, Any]],
    areas: dict[str, Area],
    problems: list[Problem],
    rivers: dict[str, River | Road] | None = None,
    roads: dict[str, River | Road] | None = None,
) -> None:
    seen: set[str] = set()
    identities: dict[tuple[str, str], str] = {}
    for i, device in devices:
        entry = f"devices[{i}] (id={device.id})"
        if device.id in seen:
            problems.append(Problem(file, entry, "id", "duplicate device id"))
        seen.add(device.id)
        identity = getattr(device, "identity", None)
        if identity is not None:
            key = (device.protocol, identity)
            if key in identities:
                name = "mn" if device.protocol == "hj212" else "station_address"
                problems.append(
                    Problem(file, entry, name, f"{identity} is {identities[key]}'s too")
                )
            identities.setdefault(key, device.id)
        grid = areas.get(device.grid)
        if grid is None:
            problems.append(Problem(file, entry, "grid", f"no area {device.grid!r}"))
        elif grid.level is not Level.GRID:
            problems.append(Problem(file, entry, "grid", f"{device.grid} is a {grid.level}"))
        ways = rivers if device.kind is Kind.RIVER else roads
        check_segment(file, entry, device, ways or {}, areas, problems)


def parse_registry(data: Any, file: str = "<registry>") -> Registry:
    """Build a Registry from parsed YAML; raise RegistryError listing every problem."""
    problems: list[Problem] = []
    if not isinstance(data, dict):
        raise RegistryError([Problem(file, "(top)", "(file)", "must be a mapping")])
    for key in set(data) - {"areas", "devices", *_DUTIES}:
        problems.append(Problem(file, "(top)", str(key), "unknown section"))
    areas = _parse_entries(file, "areas", data.get("areas"), Area.model_validate, problems)
    devices = _parse_entries(
        file, "devices", data.get("devices"), _DEVICE.validate_python, problems
    )
    duties = {
        section: _parse_entries(
            file, section, data.get(section, []), model.model_validate, problems
        )
        for section, model in _DUTIES.items()
    }
    by_id = {a.id: a for _, a in areas}
    _check_areas(file, areas, problems)
    segments: dict[str, str] = {}
    check_ways(file, "rivers", duties["rivers"], by_id, problems, segments)
    check_ways(file, "roads", duties["roads"], by_id, problems, segments)
    check_departments(file, duties["departments"], by_id, problems)
    rivers = {w.id: w for _, w in duties["rivers"]}
    roads = {w.id: w for _, w in duties["roads"]}
    _check_devices(file, devices, by_id, problems, rivers, roads)
    if problems:
        raise RegistryError(problems)
    return Registry(
        [a for _, a in areas],
        [d for _, d in devices],
        rivers.values(),
        roads.values(),
        [d for _, d in duties["departments"]],
    )


def load_registry(path: Path) -> Registry:
    """Load and check a registry YAML file."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise RegistryError([Problem(str(path), "(file)", "(yaml)", str(e))]) from None
    except OSError as e:
        raise RegistryError(
            [Problem(str(path), "(file)", "(read)", e.strerror or str(e))]
        ) from None
    return parse_registry(data, str(path))


def dump_registry(registry: Registry) -> dict[str, Any]:
    """The registry as plain data, in the file's shape (for synthetic registries and --json)."""
    return {
        "areas": [a.model_dump(mode="json", exclude_none=True) for a in registry.areas.values()],
        "devices": [
            d.model_dump(mode="json", exclude_none=True) for d in registry.devices.values()
        ],
        **{
            section: [w.model_dump(mode="json", exclude_none=True) for w in ways.values()]
            for section, ways in (
                ("rivers", registry.rivers),
                ("roads", registry.roads),
                ("departments", registry.departments),
            )
            if ways
        },
    }
