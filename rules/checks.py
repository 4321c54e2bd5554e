"""Checks of a parsed rule against the payload schemas, the device models and the registry.

Pydantic checks each field on its own; these check what needs more: one of two fields, a field
that every kind of the rule must have, a clear condition that must not overlap its trigger, and,
given a registry, that every device the rule watches has the attribute it compares against.
Each problem is ``(field, message)``; the loader adds the file and the rule.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from devices.kinds import Channel, Kind, Level
from devices.registry import Registry
from rules.audiences import AUDIENCE_KIND as _AUDIENCE_KIND
from rules.model import (
    AlongRiverRule,
    AnyRule,
    Comparison,
    DepartmentAudience,
    EventCountRule,
    EventRule,
    RateOfChangeRule,
    SilenceRule,
    ThresholdRule,
    WaterQualityRule,
)
from rules.schema import device_attributes, event_names, numeric_fields
from rules.waterquality import FIELDS as QUALITY_FIELDS
from rules.waterquality import WaterClass

FieldProblem = tuple[str, str]
_UP = frozenset({">", ">="})


def _listing(names: Iterable[str]) -> str:
    shown = sorted(names)
    return ", ".join(shown) if shown else "none"


def _duplicates(field: str, values: Sequence[str]) -> list[FieldProblem]:
    seen: set[str] = set()
    out = []
    for i, v in enumerate(values):
        if v in seen:
            out.append((f"{field}.{i}", f"{v!r} is listed twice"))
        seen.add(v)
    return out


def _common(rule: AnyRule, registry: Registry | None) -> list[FieldProblem]:
    out = _duplicates("kinds", [k.value for k in rule.kinds])
    if rule.devices is not None:
        out += _duplicates("devices", rule.devices)
        if registry is not None:
            for i, device_id in enumerate(rule.devices):
                device = registry.devices.get(device_id)
                if device is None:
                    out.append((f"devices.{i}", f"no device {device_id!r} in the registry"))
                elif device.kind not in rule.kinds:
                    kinds = _listing(k.value for k in rule.kinds)
                    out.append(
                        (f"devices.{i}", f"{device_id} is a {device.kind}; the rule is for {kinds}")
                    )
    return out


def _field(rule: AnyRule, field: str, channel: Channel) -> list[FieldProblem]:
    out = []
    for kind in rule.kinds:
        fields = numeric_fields(kind, channel)
        if field not in fields:
            out.append(
                (
                    "field",
                    f"a {kind} {channel} has no numeric field {field!r} "
                    f"(it has: {_listing(fields)})",
                )
            )
    return out


def _watched(rule: AnyRule, registry: Registry) -> list[str]:
    """Ids of the registry's devices the rule watches."""
    return [d.id for d in registry.devices.values() if rule.applies_to(d.kind, d.id)]


def _comparison(
    rule: ThresholdRule, where: str, cmp: Comparison, registry: Registry | None
) -> list[FieldProblem]:
    prefix = f"{where}." if where else ""
    if (cmp.value is None) == (cmp.attribute is None):
        which = "both" if cmp.value is not None else "neither"
        return [(f"{prefix}value", f"give a value or a device attribute, not {which}")]
    if cmp.attribute is None:
        if cmp.offset:
            return [(f"{prefix}offset", "an offset applies to an attribute; fold it into value")]
        return []
    out = []
    for kind in rule.kinds:
        names = device_attributes(kind)
        if cmp.attribute not in names:
            out.append(
                (
                    f"{prefix}attribute",
                    f"a {kind} device has no numeric attribute {cmp.attribute!r} "
                    f"(it has: {_listing(names)})",
                )
            )
    if registry is not None and not out:
        for device_id in _watched(rule, registry):
            if registry.devices[device_id].attribute(cmp.attribute) is None:
                out.append((f"{prefix}attribute", f"device {device_id} has no {cmp.attribute}"))
    return out


def _overlap(trigger_op: str, trigger_at: float, clear_op: str, clear_at: float) -> bool:
    """Whether some reading would satisfy both the trigger and the (opposite) clear condition."""
    if trigger_op in _UP:  # opens above trigger_at, clears below clear_at
        return clear_at > trigger_at or (
            clear_at == trigger_at and trigger_op == ">=" and clear_op == "<="
        )
    return clear_at < trigger_at or (
        clear_at == trigger_at and trigger_op == "<=" and clear_op == ">="
    )


def _threshold(rule: ThresholdRule, registry: Registry | None) -> list[FieldProblem]:
    out = _field(rule, rule.field, rule.channel)
    trigger, clear = rule.trigger, rule.clear_condition
    out += _comparison(rule, "", trigger, registry)
    if rule.clear is not None:
        out += _comparison(rule, "clear", rule.clear, registry)
    if out:
        return out
    if (trigger.op in _UP) == (clear.op in _UP):
        return [("clear.op", f"a rule that opens on {trigger.op} must clear on the other side")]
    if trigger.attribute is None and clear.attribute is None:
        assert trigger.value is not None and clear.value is not None
        if _overlap(trigger.op, trigger.value, clear.op, clear.value):
            out.append(("clear", "the clear condition overlaps the trigger"))
    elif trigger.attribute == clear.attribute:
        if _overlap(trigger.op, trigger.offset, clear.op, clear.offset):
            out.append(("clear", "the clear condition overlaps the trigger"))
    elif registry is not None:
        for device_id in _watched(rule, registry):
            device = registry.devices[device_id]
            at, back = trigger.reference(device), clear.reference(device)
            if at is not None and back is not None and _overlap(trigger.op, at, clear.op, back):
                out.append(("clear", f"for {device_id} the clear condition overlaps the trigger"))
    return out


def _rate(rule: RateOfChangeRule) -> list[FieldProblem]:
    out = _field(rule, rule.field, Channel.TELEMETRY)
    if (rule.rise is None) == (rule.fall is None):
        which = "both" if rule.rise is not None else "neither"
        out.append(("rise", f"give rise or fall, not {which}"))
    if rule.window <= 0:
        out.append(("window", "must be longer than 0s"))
    if rule.per <= 0:
        out.append(("per", "must be longer than 0s"))
    if rule.min_span is not None and rule.min_span > rule.window:
        out.append(("min_span", "is longer than the window"))
    if rule.clear_below is not None and rule.clear_below >= rule.limit:
        out.append(("clear_below", f"must be below the opening rate {rule.limit:g}"))
    return out


def _events(rule: EventRule | EventCountRule) -> list[FieldProblem]:
    out = _duplicates("events", rule.events)
    for kind in rule.kinds:
        names = event_names(kind)
        if names is None:
            out.append(("kinds", f"a {kind} device publishes no events"))
            continue
        for i, event in enumerate(rule.events):
            if event not in names:
                out.append(
                    (f"events.{i}", f"a {kind} has no event {event!r} (it has: {_listing(names)})")
                )
    return out


def _quality(rule: WaterQualityRule, registry: Registry | None) -> list[FieldProblem]:
    out = []
    if rule.worse_than is WaterClass.WORSE_THAN_V:
        out.append(("worse_than", "nothing is worse than 劣Ⅴ; use V to alert on 劣Ⅴ"))
    for kind in rule.kinds:
        missing = [f for f in QUALITY_FIELDS if f not in numeric_fields(kind, Channel.TELEMETRY)]
        if missing:
            out.append(("kinds", f"a {kind} telemetry has no {', '.join(missing)}"))
    for field in QUALITY_FIELDS:
        if rule.valid_for.window(field) <= 0:
            out.append((f"valid_for.{field}", "must be longer than 0s"))
    if rule.default_target is not None:
        if rule.worse_than != "target":
            out.append(("default_target", "applies only with worse_than: target"))
        elif rule.default_target is WaterClass.WORSE_THAN_V:
            out.append(("default_target", "a target is a class to meet: I, II, III, IV or V"))
    elif rule.worse_than == "target" and registry is not None and not out:
        # A station without a target would never be judged: say so rather than stay silent.
        for device_id in _watched(rule, registry):
            if getattr(registry.devices[device_id], "target_class", None) is None:
                out.append(
                    (
                        "worse_than",
                        f"device {device_id} has no target_class (or give default_target)",
                    )
                )
    return out


def _silence(rule: SilenceRule) -> list[FieldProblem]:
    out = _duplicates("channels", rule.channels)
    for i, channel in enumerate(rule.channels):
        if not any(channel in numeric_fields(k, Channel.TELEMETRY) for k in rule.kinds):
            kinds = _listing(k.value for k in rule.kinds)
            out.append((f"channels.{i}", f"no {kinds} telemetry has a field {channel!r}"))
    return out


def _audiences(rule: AnyRule, registry: Registry | None) -> list[FieldProblem]:
    out: list[FieldProblem] = []
    seen: list[object] = []
    for i, audience in enumerate(rule.notify):
        where = f"notify.{i}"
        if audience in seen:
            out.append((where, "listed twice"))
        seen.append(audience)
        if isinstance(audience, DepartmentAudience):
            # A registry that declares no departments (one written before they existed, a test
            # city) is not checked: there the audience never applies and the grid hears it.
            if (
                registry
                and registry.departments
                and audience.department not in registry.departments
            ):
                known = _listing(registry.departments)
                out.append((where, f"no department {audience.department!r} (known: {known})"))
        elif (kind := _AUDIENCE_KIND.get(audience)) is not None and kind not in rule.kinds:
            out.append(
                (
                    where,
                    f"a {audience} answers for {kind} devices; the rule watches "
                    f"{_listing(k.value for k in rule.kinds)}",
                )
            )
    if "grid" not in rule.notify:
        # Escalation climbs the area chain: without it nobody would be told of the climb.
        if rule.escalate_after is not None:
            out.append(("escalate_after", "climbs the area chain: add grid to notify"))
        if rule.start_level is not Level.GRID:
            out.append(("start_level", "is where the area chain starts: add grid to notify"))
    return out


def check_rule(rule: AnyRule, registry: Registry | None = None) -> list[FieldProblem]:
    """Everything wrong with one rule beyond its own fields' types."""
    out = _common(rule, registry) + _audiences(rule, registry)
    if isinstance(rule, ThresholdRule):
        out += _threshold(rule, registry)
    elif isinstance(rule, RateOfChangeRule):
        out += _rate(rule)
    elif isinstance(rule, EventRule):
        out += _events(rule)
        if rule.clear_after is not None and rule.clear_after <= 0:
            out.append(("clear_after", "must be longer than 0s"))
        if rule.per == "segment" and Kind.GATE in rule.kinds:
            out.append(("per", "gates are on no segment: per: segment is for river and road"))
    elif isinstance(rule, EventCountRule):
        out += _events(rule)
        if rule.window <= 0:
            out.append(("window", "must be longer than 0s"))
    elif isinstance(rule, WaterQualityRule):
        out += _quality(rule, registry)
    elif isinstance(rule, AlongRiverRule):
        out += _along_river(rule)
    else:
        out += _silence(rule)
    return out


def _along_river(rule: AlongRiverRule) -> list[FieldProblem]:
    out = _duplicates("after", rule.after)
    if any(kind is not Kind.RIVER for kind in rule.kinds):
        out.append(("kinds", "along_river follows rivers: kinds: [river]"))
    if rule.within <= 0:
        out.append(("within", "must be longer than 0s"))
    if rule.id in rule.after:
        out.append(("after", "a rule cannot follow itself"))
    return out


def check_following(rules: Sequence[AnyRule]) -> list[tuple[int, str, str]]:
    """Across the file: what along_river rules follow exists, watches rivers and is not itself
    a follower. (index of the rule, field, message) for each problem."""
    by_id = {r.id: r for r in rules}
    out: list[tuple[int, str, str]] = []
    for i, rule in enumerate(rules):
        if not isinstance(rule, AlongRiverRule):
            continue
        for j, name in enumerate(rule.after):
            followed = by_id.get(name)
            if followed is None:
                out.append((i, f"after.{j}", f"no rule {name!r} in this file"))
            elif isinstance(followed, AlongRiverRule):
                out.append(
                    (i, f"after.{j}", f"{name} is along_river itself: follow what it follows")
                )
            elif Kind.RIVER not in followed.kinds:
                out.append((i, f"after.{j}", f"{name} does not watch river stations"))
    return out
