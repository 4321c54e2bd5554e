"""Period assessment after GB 3838-2002: a station's water class over a local day or month,
whether it meets its target class (水功能区目标), and a group's compliance rate (达标率).

Pure, no I/O: the caller gives each station's per-parameter mean over the period (the mean of
every sample in it) and how many samples that is; the period's boundaries are computed here
from the date and the time zone alone.

- Each parameter's mean is rounded to ``MEAN_DECIMALS`` and classed by the table of
  ``rules.waterquality`` (pH: 6-9 is within every class, outside it worse than V). The class
  shown is the class of the number shown: float addition cannot turn a mean of 1.0 mg/L
  NH3-N (class III) into 1.0000000000000002 (class IV).
- The station's class is the worst of its parameters' classes; it meets its target when that
  class is no worse than the target. A station without a target is judged against
  ``DEFAULT_TARGET`` (class III), and says so (``target_is_default``).
- A station with no sample of any parameter in the period is not assessed: it is listed in its
  group's ``not_assessed`` and counted neither above nor below the line.
- A group's rate is stations meeting / stations assessed, in percent to 0.1; None when none
  was assessed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

from rules.waterquality import FIELDS, WaterClass, classify

PeriodKind = Literal["day", "month"]
DEFAULT_TARGET = WaterClass.III
MEAN_DECIMALS = 4
_FIRST_YEAR, _LAST_YEAR = 2000, 2099  # the span device timestamps may have
_DAY = re.compile(r"^(\d{4})-(\d{2})-(\d{2})$")
_MONTH = re.compile(r"^(\d{4})-(\d{2})$")


# --- periods ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Period:
    """A local calendar day or month of a time zone: [start, end), both aware, in that zone."""

    kind: PeriodKind
    label: str  # "2026-06-01" or "2026-06"
    start: datetime
    end: datetime


def _midnight(day: date, tz: ZoneInfo) -> datetime:
    # Local midnight, normalised through UTC so the offset is the one in force then (where a
    # zone skips midnight, fold=0 reads it with the offset before the change).
    return datetime.combine(day, time(0), tzinfo=tz).astimezone(UTC).astimezone(tz)


def _next(kind: PeriodKind, first: date) -> date:
    if kind == "day":
        return first + timedelta(days=1)
    return date(first.year + (first.month == 12), first.month % 12 + 1, 1)


def period_of(kind: PeriodKind, day: date, tz: ZoneInfo) -> Period:
    """The day, or the month, that holds the local date ``day``."""
    first = day if kind == "day" else day.replace(day=1)
    label = first.isoformat() if kind == "day" else f"{first.year:04d}-{first.month:02d}"
    return Period(kind, label, _midnight(first, tz), _midnight(_next(kind, first), tz))


def period_containing(kind: PeriodKind, moment: datetime, tz: ZoneInfo) -> Period:
    """The local day or month of ``tz`` that holds the instant ``moment`` (aware)."""
    if moment.tzinfo is None:
        raise ValueError("need an aware datetime")
    return period_of(kind, moment.astimezone(tz).date(), tz)


def parse_period(kind: PeriodKind, text: str, tz: ZoneInfo) -> Period:
    """``YYYY-MM-DD`` for a day, ``YYYY-MM`` for a month (years 2000-2099); ValueError else."""
    found = (_DAY if kind == "day" else _MONTH).fullmatch(text)
    if found is None:
        shape = "YYYY-MM-DD" if kind == "day" else "YYYY-MM"
        raise ValueError(f"a {kind} is written {shape}, not {text[:32]!r}")
    year, month = int(found.group(1)), int(found.group(2))
    day = int(found.group(3)) if kind == "day" else 1
    if not _FIRST_YEAR <= year <= _LAST_YEAR:
        raise ValueError(f"the year must be {_FIRST_YEAR}-{_LAST_YEAR}")
    try:
        return period_of(kind, date(year, month, day), tz)
    except ValueError:
        raise ValueError(f"{text!r} is not a date of the calendar") from None


# --- stations --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sampled:
    """One parameter over the period: the mean of its samples and how many there were."""

    mean: float
    samples: int


@dataclass(frozen=True, slots=True)
class ParameterResult:
    """A parameter's period mean (rounded), its sample count and the mean's class."""

    mean: float
    samples: int
    water_class: WaterClass


@dataclass(frozen=True, slots=True)
class StationResult:
    """A station judged over a period; ``water_class`` None means not assessed (no samples)."""

    device: str
    target: WaterClass
    target_is_default: bool
    parameters: Mapping[str, ParameterResult]  # in the table's order, those with samples
    water_class: WaterClass | None
    over_target: tuple[str, ...]  # fields whose class is worse than the target

    @property
    def assessed(self) -> bool:
        """Whether any parameter had a sample in the period."""
        return self.water_class is not None

    @property
    def meets_target(self) -> bool | None:
        """Class no worse than the target; None when not assessed."""
        if self.water_class is None:
            return None
        return self.water_class <= self.target


def assess_station(
    device: str, target: WaterClass | None, sampled: Mapping[str, Sampled]
) -> StationResult:
    """The station's class over the period from its parameters' means (see the module doc).

    ``sampled`` maps table fields to their period means; other keys, parameters without
    samples and non-finite means are left out.
    """
    goal = DEFAULT_TARGET if target is None else target
    means = {
        field: round(s.mean, MEAN_DECIMALS)
        for field, s in sampled.items()
        if field in FIELDS and s.samples > 0 and math.isfinite(s.mean)
    }
    if not means:
        return StationResult(device, goal, target is None, {}, None, ())
    judged = classify(means)
    parameters = {
        field: ParameterResult(means[field], sampled[field].samples, judged.classes[field])
        for field in FIELDS
        if field in means
    }
    over = tuple(field for field, p in parameters.items() if p.water_class > goal)
    return StationResult(device, goal, target is None, parameters, judged.water_class, over)


# --- groups ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GroupResult:
    """The compliance of a group of stations (a river segment, a county, all of them)."""

    id: str | None
    stations: tuple[str, ...]
    assessed: int
    meeting: int
    not_assessed: tuple[str, ...]

    @property
    def rate(self) -> float | None:
        """达标率: meeting / assessed in percent, to 0.1; None when none was assessed."""
        if self.assessed == 0:
            return None
        return round(self.meeting * 100 / self.assessed, 1)


def compliance(group: str | None, stations: Iterable[StationResult]) -> GroupResult:
    """Stations meeting their target over stations assessed; the others listed apart."""
    members = list(stations)
    assessed = [s for s in members if s.assessed]
    return GroupResult(
        id=group,
        stations=tuple(s.device for s in members),
        assessed=len(assessed),
        meeting=sum(1 for s in assessed if s.meets_target),
        not_assessed=tuple(s.device for s in members if not s.assessed),
    )


def compliance_by(
    stations: Iterable[StationResult], group_of: Callable[[str], str | None]
) -> dict[str | None, GroupResult]:
    """One ``compliance`` per group, ``group_of(device)`` naming each station's group, in the
    order the groups are first met."""
    members: dict[str | None, list[StationResult]] = {}
    for station in stations:
        members.setdefault(group_of(station.device), []).append(station)
    return {group: compliance(group, found) for group, found in members.items()}
