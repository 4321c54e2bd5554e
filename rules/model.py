"""Rule models (docs/rules.md): what a rule file may say, validated strictly with pydantic.

A rule file is ``rules:`` followed by a list; each rule picks its form with ``type``:
``threshold``, ``rate_of_change``, ``event``, ``event_count``, ``water_quality`` or ``silence``.
Unknown keys are errors, numbers are not coerced from strings, durations need a unit. Checks
that need more than one field, or the payload schemas and the registry, are in
``rules.checks`` so every problem is reported at once with the field it concerns.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from enum import StrEnum
from typing import Annotated, Any, Literal, Protocol

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    Strict,
    TypeAdapter,
)

from devices.kinds import Channel, Kind, Level
from devices.responsibility import DepartmentId
from devices.topics import ID_PATTERN
from rules.durations import Duration
from rules.waterquality import WaterClass

RuleId = Annotated[str, Field(pattern=f"^{ID_PATTERN}$")]
DeviceId = Annotated[str, Field(pattern=f"^{ID_PATTERN}$")]
# A payload field, a device attribute or an event name: a Python identifier in lower case.
Name = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
Op = Literal[">", ">=", "<", "<="]


class Severity(StrEnum):
    """How bad it is, least first."""

    INFO = "info"
    WARNING = "warning"
    MAJOR = "major"
    CRITICAL = "critical"


def _water_class(value: Any) -> WaterClass:
    if isinstance(value, WaterClass):
        return value
    if not isinstance(value, str):
        raise ValueError("a water class is written I, II, III, IV or V")
    return WaterClass.parse(value)


WaterClassField = Annotated[
    WaterClass,
    BeforeValidator(_water_class),
    PlainSerializer(lambda c: c.label, return_type=str, when_used="json"),
]


# Enums come from YAML as strings: strict about everything else, lax enough to accept those.
KindName = Annotated[Kind, Strict(False)]
LevelName = Annotated[Level, Strict(False)]
SeverityName = Annotated["Severity", Strict(False)]


class _Strict(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, strict=True, allow_inf_nan=False, populate_by_name=False
    )


class HasAttributes(Protocol):
    """A registry device: ``Device.attribute(name)`` gives a number or None."""

    def attribute(self, name: str) -> float | None: ...


class Comparison(_Strict):
    """``field op reference``, the reference being ``value`` or ``attribute`` + ``offset``."""

    op: Op
    value: float | None = None
    attribute: Name | None = None
    offset: float = 0.0  # added to the attribute: ``warning_level_m`` - 0.1 is offset -0.1

    def reference(self, device: HasAttributes) -> float | None:
        """The number compared against for ``device``; None if it lacks the attribute."""
        if self.attribute is None:
            return self.value
        base = device.attribute(self.attribute)
        # Rounded to a micrometre: 211.5 + 0.2 is 211.70000000000002 in floats, and a reading
        # of exactly 211.70 must meet it the same on every station (and read so in the message).
        return None if base is None else round(base + self.offset, 6)

    def describe_reference(self) -> str:
        """``"218.5"``, ``"warning_level_m"`` or ``"warning_level_m - 0.1"``."""
        if self.attribute is None:
            return f"{self.value:g}"
        if not self.offset:
            return self.attribute
        sign = "+" if self.offset > 0 else "-"
        return f"{self.attribute} {sign} {abs(self.offset):g}"


class Flap(_Strict):
    """Flap suppression: more than ``max_transitions`` opens and clears within ``window``."""

    max_transitions: int = Field(ge=2, le=1000)
    window: Duration


class DepartmentAudience(_Strict):
    """``department: flood_hq``: the department's unit for the device's area."""

    department: DepartmentId


# Who hears a rule's alerts (docs/rules.md "Who hears an alert"): ``grid`` is the area chain
# (from ``start_level``, climbing on ``escalate_after``); the chiefs are those of the device's
# river or road segment; a department, its unit for the device's area.
Audience = Literal["grid", "river_chief", "river_police", "road_chief"] | DepartmentAudience


def _grid_only() -> list[Audience]:
    return ["grid"]  # today's behaviour: the device's grid cell first, then up the area chain


class RuleBase(_Strict):
    id: RuleId
    name: str = Field(min_length=1, max_length=128)  # English
    name_zh: str = Field(min_length=1, max_length=64)
    severity: SeverityName
    kinds: list[KindName] = Field(min_length=1, max_length=len(Kind))
    devices: list[DeviceId] | None = Field(None, min_length=1)  # only these devices
    escalate_after: Duration | None = None  # unacknowledged this long → next level up
    flap: Flap | None = None
    notify: list[Audience] = Field(default_factory=_grid_only, min_length=1, max_length=16)
    start_level: LevelName = Level.GRID  # where the area chain (``grid``) starts
    case: Literal["auto", "manual"] = "manual"  # auto: every alert it opens becomes a case

    def applies_to(self, kind: Kind, device_id: str) -> bool:
        """Whether the rule watches this device."""
        return kind in self.kinds and (self.devices is None or device_id in self.devices)


class ThresholdRule(RuleBase):
    """A field against a constant or a device attribute, held ``for`` a while, with hysteresis."""

    type: Literal["threshold"]
    field: Name
    channel: Literal[Channel.TELEMETRY, Channel.EVENT] = Channel.TELEMETRY
    op: Op
    value: float | None = None
    attribute: Name | None = None
    offset: float = 0.0
    for_: Duration = Field(0, alias="for")
    clear: Comparison | None = None  # default: the negation of the trigger
    clear_for: Duration = 0

    @property
    def trigger(self) -> Comparison:
        """The trigger as a comparison."""
        return Comparison(
            op=self.op, value=self.value, attribute=self.attribute, offset=self.offset
        )

    @property
    def clear_condition(self) -> Comparison:
        """The clear condition, given or the trigger's negation (``>`` 10 clears at ``<=`` 10)."""
        if self.clear is not None:
            return self.clear
        return Comparison(
            op=NEGATED[self.op], value=self.value, attribute=self.attribute, offset=self.offset
        )


NEGATED: dict[str, Op] = {">": "<=", ">=": "<", "<": ">=", "<=": ">"}


class RateOfChangeRule(RuleBase):
    """A field rising (or falling) faster than ``rise`` (``fall``) per ``per``, over ``window``."""

    type: Literal["rate_of_change"]
    field: Name
    rise: float | None = Field(None, gt=0)
    fall: float | None = Field(None, gt=0)
    per: Duration
    window: Duration
    min_span: Duration | None = None  # readings must span this much; default half the window
    clear_below: float | None = Field(None, ge=0)  # default half of rise/fall

    @property
    def limit(self) -> float:
        """The rate that opens, as a positive number (rise or fall)."""
        return self.rise if self.rise is not None else (self.fall or 0.0)

    @property
    def clear_limit(self) -> float:
        """The rate below which it clears."""
        return self.clear_below if self.clear_below is not None else self.limit / 2

    @property
    def needed_span(self) -> int:
        """Milliseconds the readings in the window must span before a rate is trusted."""
        return self.min_span if self.min_span is not None else self.window // 2


class EventRule(RuleBase):
    """Opens on a matching event; clears after ``clear_after`` without one, or by hand."""

    type: Literal["event"]
    events: list[Name] = Field(min_length=1)
    clear_after: Duration | None = None
    # ``segment``: reports from every device on one river or road segment are one condition
    # (one accident seen by three cameras is one incident), held under the segment's first
    # device along the way and listing who reported it. ``device``: each device its own.
    per: Literal["device", "segment"] = "device"


class EventCountRule(RuleBase):
    """At least ``count`` matching events within a sliding ``window``."""

    type: Literal["event_count"]
    events: list[Name] = Field(min_length=1)
    count: int = Field(ge=1, le=10_000)
    window: Duration


def _class_or_target(value: Any) -> WaterClass | Literal["target"]:
    return "target" if value == "target" else _water_class(value)


def _class_or_target_text(value: WaterClass | Literal["target"]) -> str:
    return value if isinstance(value, str) else value.label


# ``worse_than``: a class, or ``target`` for each station's own target class (水功能区目标).
ClassOrTarget = Annotated[
    WaterClass | Literal["target"],
    BeforeValidator(_class_or_target),
    PlainSerializer(_class_or_target_text, return_type=str, when_used="json"),
]

_HOUR_MS = 3_600_000


class ValidFor(_Strict):
    """How long each parameter's newest value stands for the water (docs/rules.md).

    About 2-3 times the instrument's cycle, so one missed or late cycle does not leave the
    station unjudged: the pH and DO probes report every few minutes (2 h rides out a cleaning
    or calibration), the NH3-N, CODMn and TP analysers run on 2-hour cycles here (6 h).
    Field names are the payload's (rules.waterquality.FIELDS).
    """

    ph: Duration = 2 * _HOUR_MS
    do_mgl: Duration = 2 * _HOUR_MS
    codmn_mgl: Duration = 6 * _HOUR_MS
    nh3n_mgl: Duration = 6 * _HOUR_MS
    tp_mgl: Duration = 6 * _HOUR_MS

    def window(self, field: str) -> int:
        """Milliseconds a value of ``field`` stays valid."""
        ms: int = getattr(self, field)
        return ms


class WaterQualityRule(RuleBase):
    """The station's GB 3838-2002 class, assessed over each parameter's newest valid value,
    worse than ``worse_than`` (a class, or ``target``: the station's ``target_class``)."""

    type: Literal["water_quality"]
    worse_than: ClassOrTarget
    # With ``target``: the class for a station that has no target_class (a registry written
    # before targets, a synthetic city). Without it such a station is an error at load.
    default_target: WaterClassField | None = None
    valid_for: ValidFor = Field(default_factory=ValidFor)


class SilenceRule(RuleBase):
    """No message for ``k`` × ``report_interval_s``, or an offline status; and quiet channels."""

    type: Literal["silence"]
    k: float = Field(3.0, gt=0, le=1000)
    channels: list[Name] = Field(default_factory=list)  # telemetry fields watched one by one
    offline_status: bool = True  # a status ``online: false`` opens at once
    watch_unseen: bool = False  # also devices not heard from since the engine started
    # An offline status with one of these reasons is a planned stop (maintenance, a clean
    # shutdown): no alert, and no silence alarm until the device speaks again.
    planned_stop_reasons: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(
        default_factory=list
    )


class AlongRiverRule(RuleBase):
    """What is upstream comes down (docs/rules.md "Along the river"): when one of the ``after``
    rules opens at a station, every station downstream on the same river that the water reaches
    within ``within`` is told, with the expected arrival. It clears once every such upstream
    condition has cleared and ``hold`` has passed since the expected arrival."""

    type: Literal["along_river"]
    after: list[RuleId] = Field(min_length=1, max_length=16)
    within: Duration = 8 * _HOUR_MS
    hold: Duration = _HOUR_MS


Rule = Annotated[
    ThresholdRule
    | RateOfChangeRule
    | EventRule
    | EventCountRule
    | WaterQualityRule
    | SilenceRule
    | AlongRiverRule,
    Field(discriminator="type"),
]
AnyRule = (
    ThresholdRule
    | RateOfChangeRule
    | EventRule
    | EventCountRule
    | WaterQualityRule
    | SilenceRule
    | AlongRiverRule
)
RULE: TypeAdapter[AnyRule] = TypeAdapter(Rule)
FORMS: tuple[str, ...] = (
    "threshold",
    "rate_of_change",
    "event",
    "event_count",
    "water_quality",
    "silence",
    "along_river",
)


class RuleSet(Sequence[AnyRule]):
    """The rules of one file, in file order, with ids unique (the loader checks)."""

    def __init__(self, rules: Sequence[AnyRule], source: str = "<rules>") -> None:
        self.rules: tuple[AnyRule, ...] = tuple(rules)
        self.source = source
        self.by_id: dict[str, AnyRule] = {r.id: r for r in self.rules}
        if len(self.by_id) != len(self.rules):
            raise ValueError("rule ids must be unique")

    def __len__(self) -> int:
        return len(self.rules)

    def __iter__(self) -> Iterator[AnyRule]:
        return iter(self.rules)

    def __getitem__(self, index: Any) -> Any:
        return self.rules[index]

    def get(self, rule_id: str) -> AnyRule | None:
        """The rule with this id, or None."""
        return self.by_id.get(rule_id)

    def dump(self) -> list[dict[str, Any]]:
        """The rules as JSON-ready data in the file's shape (durations as ``"10m"``)."""
        return [r.model_dump(mode="json", by_alias=True, exclude_none=True) for r in self.rules]
