"""Units of the numeric fields devices report, from one explicit table.

The table is keyed by field name: a name means the same quantity in every kind that has it
(``battery_v`` is volts at a gate and at a river station). ``tests/unit/test_series.py`` checks
that every numeric field of every payload schema is in the table, so a new field without a unit
fails the tests instead of reaching the API unitless.
"""

from __future__ import annotations

import types
from typing import Annotated, Any, Union, get_args, get_origin

from devices.kinds import Channel, Kind
from devices.payloads import SCHEMAS

# Envelope fields, not measurements: ``ts`` is the point's time, ``seq`` a message counter.
META_FIELDS = frozenset({"ts", "seq"})

# Symbols as a reader expects them (SI, "pH", "NTU"); "1" is dimensionless (UCUM's spelling).
UNITS: dict[str, str] = {
    # gate telemetry: counts since the last report
    "people_in": "count",
    "people_out": "count",
    "vehicles_in": "count",
    "vehicles_out": "count",
    "battery_v": "V",
    # river telemetry
    "water_level_m": "m",  # elevation above the national datum
    "flow_m3s": "m³/s",
    "rainfall_mm": "mm",
    "water_temp_c": "°C",
    "ph": "pH",
    "do_mgl": "mg/L",
    "nh3n_mgl": "mg/L",
    "codmn_mgl": "mg/L",
    "tp_mgl": "mg/L",
    "turbidity_ntu": "NTU",
    # road telemetry
    "vehicle_count": "count",
    "avg_speed_kmh": "km/h",
    "occupancy_pct": "%",
    "queue_length_m": "m",
    # road events
    "speed_kmh": "km/h",
    "lane": "lane",  # a lane number (1 = nearest the kerb), not a quantity
    "confidence": "1",  # detector confidence in [0, 1]
}


def _number_type(annotation: Any) -> type | None:
    """int or float for a number, optionally in Annotated and/or ``| None``; bool is not."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _number_type(get_args(annotation)[0])
    if origin is Union or origin is types.UnionType:
        found = {_number_type(a) for a in get_args(annotation) if a is not type(None)}
        return found.pop() if len(found) == 1 else None
    return annotation if annotation is int or annotation is float else None


def _numeric(kind: Kind, channel: Channel) -> dict[str, type]:
    schema = SCHEMAS.get((kind, channel))
    if schema is None:
        return {}
    types_ = {name: _number_type(info.annotation) for name, info in schema.model_fields.items()}
    return {n: t for n, t in types_.items() if t is not None and n not in META_FIELDS}


def numeric_fields(kind: Kind, channel: Channel = Channel.TELEMETRY) -> tuple[str, ...]:
    """The measured numeric fields of a kind's channel, in schema order (no ts/seq)."""
    return tuple(_numeric(kind, channel))


def integer_fields(kind: Kind, channel: Channel = Channel.TELEMETRY) -> frozenset[str]:
    """The numeric fields stored as integers (counts); the others are floats."""
    return frozenset(n for n, t in _numeric(kind, channel).items() if t is int)


def unit_of(kind: Kind, field: str) -> str:
    """The unit of a numeric telemetry or event field of ``kind``; KeyError if it has none."""
    if field not in numeric_fields(kind, Channel.TELEMETRY) + numeric_fields(kind, Channel.EVENT):
        raise KeyError(f"{kind.value} reports no numeric field {field[:64]!r}")
    return UNITS[field]
