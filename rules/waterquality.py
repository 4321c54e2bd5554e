"""Surface-water quality class after GB 3838-2002 (地表水环境质量标准), Table 1.

Source: GB 3838-2002 *Environmental quality standards for surface water* (地表水环境质量标准),
Table 1 "Standard limits for basic items" (地表水环境质量标准基本项目标准限值), items 1-9.
Only the parameters river stations measure here are listed. A value equal to a limit meets it
(the table's "≥" and "≤"), so it lands in the better class.

Notes on the table as used here:
- pH is 6-9 for every class; outside that range the sample is worse than class V.
- Dissolved oxygen class I is "≥ 7.5 mg/L or 90 % saturation"; saturation needs temperature and
  pressure, so the 7.5 mg/L limit is used.
- Total phosphorus has stricter limits for lakes and reservoirs (in brackets in the table:
  0.01, 0.025, 0.05, 0.1, 0.2); the river limits are used, as every station here is on a river.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum, StrEnum

STANDARD = "GB 3838-2002, Table 1 (basic items)"


class WaterClass(IntEnum):
    """Class I (best) to V, and worse than V; larger is worse, so ``max`` is the worst."""

    I = 1  # noqa: E741 - the standard's own name for the class
    II = 2
    III = 3
    IV = 4
    V = 5
    WORSE_THAN_V = 6

    @property
    def label(self) -> str:
        """``"III"``, or ``"劣Ⅴ"`` for worse than class V."""
        return "劣Ⅴ" if self is WaterClass.WORSE_THAN_V else self.name

    @property
    def label_en(self) -> str:
        """``"class III"``, or ``"worse than class V"``."""
        return "worse than class V" if self is WaterClass.WORSE_THAN_V else f"class {self.name}"

    @classmethod
    def parse(cls, text: str) -> WaterClass:
        """``"III"``, ``"Ⅲ"``, ``"3"``, ``"劣Ⅴ"`` or ``"worse_than_V"`` → the class."""
        key = text.strip().upper().removesuffix("类").removeprefix("CLASS").strip()
        found = _NAMES.get(key)
        if found is None:
            raise ValueError(f"{text!r} is not a water class (I, II, III, IV, V or 劣Ⅴ)")
        return found


_ROMAN = {"Ⅰ": "I", "Ⅱ": "II", "Ⅲ": "III", "Ⅳ": "IV", "Ⅴ": "V"}
_NAMES: dict[str, WaterClass] = {c.name: c for c in WaterClass if c.value <= 5}
_NAMES.update({glyph: WaterClass[name] for glyph, name in _ROMAN.items()})
_NAMES.update({str(c.value): c for c in WaterClass if c.value <= 5})
_NAMES.update({"劣Ⅴ": WaterClass.WORSE_THAN_V, "劣V": WaterClass.WORSE_THAN_V})
_NAMES.update({"WORSE_THAN_V": WaterClass.WORSE_THAN_V})


_IN_ORDER = tuple(WaterClass)


class Bound(StrEnum):
    """How a parameter's limits read."""

    AT_LEAST = "at_least"  # the class needs value ≥ limit (dissolved oxygen)
    AT_MOST = "at_most"  # the class needs value ≤ limit (pollutants)
    WITHIN = "within"  # the class needs low ≤ value ≤ high (pH)


@dataclass(frozen=True, slots=True)
class Limits:
    """One row of Table 1: a payload field and its limits for classes I, II, III, IV, V."""

    field: str  # the river telemetry field (devices.payloads.RiverTelemetry)
    name: str  # as the standard writes it
    unit: str
    bound: Bound
    limits: tuple[float, float, float, float, float] = (0, 0, 0, 0, 0)
    within: tuple[float, float] = (0, 0)  # for Bound.WITHIN, the same for every class

    def reading(self, value: float) -> str:
        """``"NH3-N 2.3 mg/L"``, ``"pH 5.5"``."""
        unit = f" {self.unit}" if self.unit else ""
        return f"{self.name} {value:g}{unit}"

    def class_of(self, value: float) -> WaterClass:
        """The best class whose limit ``value`` meets (limits included)."""
        # Module constants, not Bound.X / WaterClass.X: each enum member lookup costs ~0.1 µs,
        # and this runs for every parameter of every river sample.
        bound = self.bound
        if bound is _WITHIN:
            low, high = self.within
            return _CLASS_I if low <= value <= high else _WORSE_THAN_V
        if bound is _AT_LEAST:
            for cls, limit in zip(_IN_ORDER, self.limits, strict=False):
                if value >= limit:
                    return cls
        else:
            for cls, limit in zip(_IN_ORDER, self.limits, strict=False):
                if value <= limit:
                    return cls
        return _WORSE_THAN_V


_WITHIN, _AT_LEAST = Bound.WITHIN, Bound.AT_LEAST
_CLASS_I, _WORSE_THAN_V = WaterClass.I, WaterClass.WORSE_THAN_V

# GB 3838-2002 Table 1, the rows river stations measure, in the table's order.
TABLE: tuple[Limits, ...] = (
    Limits("ph", "pH", "", Bound.WITHIN, within=(6.0, 9.0)),  # item 2
    Limits("do_mgl", "DO", "mg/L", Bound.AT_LEAST, (7.5, 6.0, 5.0, 3.0, 2.0)),  # item 3
    Limits("codmn_mgl", "CODMn", "mg/L", Bound.AT_MOST, (2.0, 4.0, 6.0, 10.0, 15.0)),  # item 4
    Limits("nh3n_mgl", "NH3-N", "mg/L", Bound.AT_MOST, (0.15, 0.5, 1.0, 1.5, 2.0)),  # item 7
    Limits("tp_mgl", "TP", "mg/L", Bound.AT_MOST, (0.02, 0.1, 0.2, 0.3, 0.4)),  # item 8, rivers
)
FIELDS: tuple[str, ...] = tuple(row.field for row in TABLE)
_BY_FIELD = {row.field: row for row in TABLE}


@dataclass(frozen=True, slots=True)
class Classification:
    """The class of one sample, the parameter(s) that decided it, and each parameter's class."""

    water_class: WaterClass
    decided_by: tuple[str, ...]  # fields whose class is the sample's class, in table order
    classes: Mapping[str, WaterClass]

    def describe(self, values: Mapping[str, float]) -> str:
        """``"worse than class V: NH3-N 4.2 mg/L, TP 0.8 mg/L"``."""
        parts = [_BY_FIELD[field].reading(values[field]) for field in self.decided_by]
        return f"{self.water_class.label_en}: {', '.join(parts)}"


def worst_class(values: Mapping[str, float | None]) -> WaterClass | None:
    """Just the class of a sample (``classify`` without the why), or None if no parameter."""
    worst: WaterClass | None = None
    for row in TABLE:
        value = values.get(row.field)
        if value is not None:
            cls = row.class_of(value)
            if worst is None or cls > worst:
                worst = cls
    return worst


def classify(values: Mapping[str, float | None]) -> Classification:
    """The GB 3838-2002 class of a sample: the worst over the table's parameters present.

    ``values`` maps payload field names (``ph``, ``do_mgl``, ``codmn_mgl``, ``nh3n_mgl``,
    ``tp_mgl``) to readings; other keys and None values are ignored. Raise ValueError if no
    parameter of the table is present.
    """
    classes: dict[str, WaterClass] = {}
    worst = WaterClass.I
    for row in TABLE:
        value = values.get(row.field)
        if value is not None:
            cls = classes[row.field] = row.class_of(value)
            if cls > worst:
                worst = cls
    if not classes:
        raise ValueError(f"no parameter of {STANDARD} in the sample ({', '.join(FIELDS)})")
    decided = tuple(field for field, cls in classes.items() if cls is worst)
    return Classification(worst, decided, classes)
