"""What rules may read, found in the device side's own models rather than listed again here.

Numeric payload fields per (kind, channel) come from ``devices.payloads.SCHEMAS``, event names
from each event model's ``event`` literal, numeric device attributes from the registry's device
models. Adding a field to a payload model makes it usable in rules with no change here.
"""

from __future__ import annotations

import types
from functools import cache
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel

from devices.kinds import Channel, Kind
from devices.payloads import schema_for
from devices.registry import Device

_NOT_MEASUREMENTS = frozenset({"ts", "seq"})


def _base_types(annotation: Any) -> set[Any]:
    """The plain types inside ``Annotated[...]`` / ``X | None`` / ``Optional[X]``."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _base_types(get_args(annotation)[0])
    if origin is Union or origin is types.UnionType:
        out: set[Any] = set()
        for arg in get_args(annotation):
            out |= _base_types(arg)
        return out
    return {annotation}


def _numeric(annotation: Any) -> bool:
    found = _base_types(annotation) - {type(None)}
    return bool(found) and all(t in (int, float) for t in found)


@cache
def numeric_fields(kind: Kind, channel: Channel) -> frozenset[str]:
    """Numeric payload fields a rule may compare for ``kind`` on ``channel`` (none if no schema)."""
    model = schema_for(kind, channel)
    if model is None:
        return frozenset()
    return frozenset(
        name
        for name, info in model.model_fields.items()
        if name not in _NOT_MEASUREMENTS and _numeric(info.annotation)
    )


@cache
def event_names(kind: Kind) -> frozenset[str] | None:
    """The ``event`` values of ``kind``'s event channel, or None if the kind has no events."""
    model = schema_for(kind, Channel.EVENT)
    if model is None or "event" not in model.model_fields:
        return None
    annotation = model.model_fields["event"].annotation
    names: set[str] = set()
    for t in _base_types(annotation):
        if get_origin(t) is Literal:
            names |= {str(a) for a in get_args(t)}
    return frozenset(names)


def _device_models() -> dict[Kind, type[BaseModel]]:
    union = get_args(Device)[0]
    out: dict[Kind, type[BaseModel]] = {}
    for model in get_args(union):
        literal = model.model_fields["kind"].annotation
        for kind in get_args(literal):
            out[Kind(kind)] = model
    return out


@cache
def device_attributes(kind: Kind) -> frozenset[str]:
    """Numeric attributes of ``kind``'s devices that rules may reference (``Device.attribute``)."""
    model = _device_models().get(kind)
    if model is None:
        return frozenset()
    return frozenset(
        name
        for name, info in model.model_fields.items()
        if name not in {"lat", "lon"} and _numeric(info.annotation)
    )
