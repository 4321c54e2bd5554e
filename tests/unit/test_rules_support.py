"""Shared helpers for the rule tests (no tests here): a small city, message builders, a feeder."""

from __future__ import annotations

import json
from typing import Any

import yaml

from devices.kinds import Channel
from devices.payloads import (
    DeviceMessage,
    GateEvent,
    GateTelemetry,
    RiverTelemetry,
    RoadEvent,
    RoadTelemetry,
    Status,
)
from devices.registry import Registry, parse_registry
from rules.engine import Engine
from rules.loader import parse_rules
from rules.model import RuleSet
from rules.transition import Transition
from tests.unit.smallcity import SMALL_AREAS, SMALL_DEVICES

T0 = 1_719_800_000_000  # 2024-07-01T02:13:20Z
SECOND = 1000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE

# r1: warning 211.5, guarantee 213.5, reports every 60 s; g1 every 30 s; d1 every 60 s.
DEVICES: list[dict[str, Any]] = [
    SMALL_DEVICES[0],
    {**SMALL_DEVICES[1], "report_interval_s": 30},
    SMALL_DEVICES[2],
    {**SMALL_DEVICES[0], "id": "r2", "warning_level_m": 212.0, "report_interval_s": 300},
]


def city() -> Registry:
    """The small city: rivers r1 and r2, gate g1, road camera d1, all in grid g."""
    return parse_registry({"areas": SMALL_AREAS, "devices": DEVICES}, "city.yaml")


def ruleset(text: str, registry: Registry | None = None) -> RuleSet:
    """Rules from YAML text (a list of rules, without the ``rules:`` key)."""
    return parse_rules({"rules": yaml.safe_load(text)}, "test.yaml", registry or city())


def base(rule_id: str, form: str, kinds: str) -> str:
    """The fields every rule needs, as YAML mapping lines (indent 2, after "- ")."""
    return (
        f"- id: {rule_id}\n  type: {form}\n  name: {rule_id}\n  name_zh: 规则\n"
        f"  severity: warning\n  kinds: [{kinds}]\n"
    )


def river(ts: int, **fields: float) -> RiverTelemetry:
    """River telemetry; ``seq`` may be among the fields."""
    return RiverTelemetry.model_validate({"ts": ts, **fields})


def gate_event(ts: int, event: str, seq: int | None = None) -> GateEvent:
    return GateEvent.model_validate({"ts": ts, "seq": seq, "event": event})


def gate_telemetry(ts: int, seq: int | None = None) -> GateTelemetry:
    return GateTelemetry(
        ts=ts, seq=seq, door="closed", people_in=0, people_out=0, vehicles_in=0, vehicles_out=0
    )


def road_event(ts: int, event: str, seq: int | None = None) -> RoadEvent:
    return RoadEvent.model_validate({"ts": ts, "seq": seq, "event": event})


def road_telemetry(ts: int, occupancy: float, seq: int | None = None) -> RoadTelemetry:
    return RoadTelemetry(ts=ts, seq=seq, vehicle_count=10, occupancy_pct=occupancy)


def status(ts: int, online: bool, reason: str | None = None) -> Status:
    return Status(online=online, ts=ts, reason=reason)


_CHANNEL = {
    RiverTelemetry: Channel.TELEMETRY,
    GateTelemetry: Channel.TELEMETRY,
    RoadTelemetry: Channel.TELEMETRY,
    GateEvent: Channel.EVENT,
    RoadEvent: Channel.EVENT,
    Status: Channel.STATUS,
}


class Feeder:
    """An engine over the small city, with one-line feeding."""

    def __init__(self, rules: RuleSet, registry: Registry | None = None) -> None:
        self.registry = registry or city()
        self.engine = Engine(rules, self.registry)

    def __call__(self, device_id: str, message: DeviceMessage) -> list[Transition]:
        device = self.registry.devices[device_id]
        ts = message.ts if message.ts is not None else T0
        return self.engine.observe(device, _CHANNEL[type(message)], message, ts)

    def tick(self, now: int) -> list[Transition]:
        return self.engine.tick(now)

    def restarted(self) -> Feeder:
        """A new engine restored from this one's snapshot (through JSON), as after a restart."""
        again = Feeder(self.engine.rules, self.registry)
        snapshot = json.loads(json.dumps(self.engine.snapshot()))
        again.engine = Engine.restore(self.engine.rules, self.registry, snapshot)
        return again


def actions(transitions: list[Transition]) -> list[tuple[str, str]]:
    """(action, reason) of each transition."""
    return [(t.action, t.reason.value) for t in transitions]
