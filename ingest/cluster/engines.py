"""One rule engine per partition a worker owns, behind the engine's own methods (issue 16).

A partition's devices are judged by an ``Engine`` over a registry of only those devices, so
its state is exactly that partition's: saved under ``engine-p{p}`` with the partition's alert
changes (ingest/alerts/alerting.py), restored by whichever worker owns it next. ``Alerting``
calls these methods as it calls a single engine's; a device of a partition this worker does
not own (any more) is not judged here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from devices.kinds import Channel
from devices.partitions import partition_of
from devices.payloads import DeviceMessage
from devices.registry import Registry
from rules import Engine, Transition
from rules.evaluator import AnyDevice
from rules.model import AnyRule

FailureHook = Callable[[str, str, Exception], None]


def state_key(partition: int) -> str:
    """The engine state's name of ``partition`` in the alert store."""
    return f"engine-p{partition}"


class PartitionEngines:
    """The engines of the partitions held, by partition."""

    def __init__(self, rules: Iterable[AnyRule], registry: Registry, partitions: int) -> None:
        self.rules = tuple(rules)
        self.registry = registry
        self.partitions = partitions
        self.of = {d: partition_of(d, partitions) for d in registry.devices}
        members: dict[int, set[str]] = {}
        for d, p in self.of.items():
            members.setdefault(p, set()).add(d)
        self._members = {p: frozenset(ds) for p, ds in members.items()}  # fixed by the registry
        self.engines: dict[int, Engine] = {}
        self._on_failure: FailureHook | None = None
        self._failures_before: dict[str, int] = {}  # of engines dropped since
        self.caller_state: dict[str, Any] | None = None  # unused: each partition saves its own

    def devices_of(self, partition: int) -> frozenset[str]:
        """The ids of the devices the broker puts in ``partition``."""
        return self._members.get(partition, frozenset())

    def restore(self, partition: int, snapshot: Any) -> Engine:
        """The engine of ``partition`` from its saved state (fresh for None); raises on a
        state that cannot be read at all, as ``Engine.restore`` does."""
        devices = self.devices_of(partition)
        # The rivers and roads too: rules that relate devices along a way (along_river, per:
        # segment) relate those of this partition — a known limit, docs/rules.md.
        sub = Registry(
            self.registry.areas.values(),
            [d for d in self.registry.devices.values() if d.id in devices],
            self.registry.rivers.values(),
            self.registry.roads.values(),
            self.registry.departments.values(),
        )
        if snapshot is None:
            engine = Engine(self.rules, sub)
        else:
            engine = Engine.restore(self.rules, sub, snapshot)
        engine.on_failure = self._on_failure
        return engine

    def install(self, partition: int, engine: Engine) -> None:
        self.engines[partition] = engine

    def remove(self, partition: int) -> None:
        engine = self.engines.pop(partition, None)
        if engine is not None:
            for rule_id, n in engine.failures.items():
                self._failures_before[rule_id] = self._failures_before.get(rule_id, 0) + n

    def _engine(self, device_id: str) -> Engine | None:
        p = self.of.get(device_id)
        return None if p is None else self.engines.get(p)

    @property
    def on_failure(self) -> FailureHook | None:
        return self._on_failure

    @on_failure.setter
    def on_failure(self, hook: FailureHook | None) -> None:
        self._on_failure = hook
        for engine in self.engines.values():
            engine.on_failure = hook

    @property
    def failures(self) -> dict[str, int]:
        total = dict(self._failures_before)
        for engine in self.engines.values():
            for rule_id, n in engine.failures.items():
                total[rule_id] = total.get(rule_id, 0) + n
        return total

    def observe(
        self,
        device: AnyDevice,
        channel: Channel,
        message: DeviceMessage,
        ts_ms: int,
        arrival_ms: int | None = None,
        not_after_ms: int | None = None,
        skew_ms: int | None = None,
    ) -> list[Transition]:
        engine = self._engine(device.id)
        if engine is None:
            return []  # not ours (any more): its new owner judges it when it reads it again
        return engine.observe(device, channel, message, ts_ms, arrival_ms, not_after_ms, skew_ms)

    def tick(self, now_ms: int) -> list[Transition]:
        out = [t for engine in self.engines.values() for t in engine.tick(now_ms)]
        out.sort(key=lambda t: (t.ts_ms, t.rule_id, t.device_id))
        return out

    def resolve(
        self,
        rule_id: str,
        device_id: str,
        now_ms: int,
        opened_ts: int | None = None,
        resolved_ts: int | None = None,
    ) -> bool:
        engine = self._engine(device_id)
        return engine is not None and engine.resolve(
            rule_id, device_id, now_ms, opened_ts, resolved_ts
        )

    def adopt(self, rule_id: str, device_id: str, opened_ts: int) -> bool:
        engine = self._engine(device_id)
        return engine is not None and engine.adopt(rule_id, device_id, opened_ts)

    def hold(self, rule_id: str, device_id: str, opened_ts: int) -> None:
        engine = self._engine(device_id)
        if engine is not None:
            engine.hold(rule_id, device_id, opened_ts)

    def watches(self, rule_id: str, device: AnyDevice) -> bool:
        engine = self._engine(device.id)
        return engine is not None and engine.watches(rule_id, device)

    def is_open(self, rule_id: str, device_id: str) -> bool:
        engine = self._engine(device_id)
        return engine is not None and engine.is_open(rule_id, device_id)

    def open_conditions(self) -> list[tuple[str, str]]:
        return [c for engine in self.engines.values() for c in engine.open_conditions()]
