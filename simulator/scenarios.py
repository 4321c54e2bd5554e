"""Scenarios: trouble injected into one device so the alert rules have something to catch.

Each scenario is plain data below: which kind of device it needs, the lasting condition it
imposes on that device's behaviour, the events it cues at fixed offsets, and whether the
connection drops. ``assign`` picks the device: the first of the kind in registry order, or the
one the operator names.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from devices.kinds import Kind
from devices.registry import GateDevice, RiverDevice, RoadDevice
from simulator.actions import Drop, Emit, Timed
from simulator.behaviour import Condition
from simulator.errors import ScenarioError

AnyDevice = GateDevice | RiverDevice | RoadDevice


@dataclass(frozen=True, slots=True)
class Cue:
    """An event published ``at_s`` after the scenario starts, then every ``every_s`` if set."""

    at_s: float
    event: str
    every_s: float | None = None

    def times(self) -> Iterator[float]:
        """Offsets from the scenario's start, in order (endless if the cue repeats)."""
        if self.every_s is None:
            yield self.at_s
            return
        for n in itertools.count():
            yield self.at_s + n * self.every_s


@dataclass(frozen=True, slots=True)
class Scenario:
    """One kind of trouble."""

    name: str
    kind: Kind | None  # the kind of device it needs; None: any device
    summary: str
    condition: Condition | None = None  # imposed from the start until the end of the run
    cues: tuple[Cue, ...] = ()
    drops_connection: bool = False


SCENARIOS: Mapping[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            name="flood",
            kind=Kind.RIVER,
            summary="torrential rain; the level passes warning, then guarantee, within ~60 s",
            condition=Condition.FLOOD,
        ),
        Scenario(
            name="pollution",
            kind=Kind.RIVER,
            summary="a spill: NH3-N, TP, CODMn worse than class V and dissolved oxygen below 2",
            condition=Condition.SPILL,
        ),
        Scenario(
            name="accident",
            kind=Kind.ROAD,
            summary="an accident; speeds collapse, the queue grows, congestion every 30 s",
            condition=Condition.JAM,
            cues=(Cue(0, "accident"), Cue(45, "congestion", every_s=30)),
        ),
        Scenario(
            name="wrong_way",
            kind=Kind.ROAD,
            summary="a driver drives against the traffic, a second one 25 s later",
            # Two sightings, not one, so the end-to-end test sees that a burst still opens a
            # single alert; traffic is left as it is, so no congestion or speeding rule trips.
            cues=(Cue(0, "wrong_way"), Cue(25, "wrong_way")),
        ),
        Scenario(
            name="tailgating",
            kind=Kind.GATE,
            summary="four people tailgate within 40 s, then the door is forced open",
            cues=(
                Cue(0, "tailgating"),
                Cue(12, "tailgating"),
                Cue(25, "tailgating"),
                Cue(38, "tailgating"),
                Cue(45, "forced_open"),
            ),
        ),
        Scenario(
            name="silent",
            kind=None,
            summary="the device stays connected but publishes nothing more",
            condition=Condition.SILENT,
        ),
        Scenario(
            name="offline",
            kind=None,
            summary="the connection drops without DISCONNECT; the broker publishes the last will",
            drops_connection=True,
        ),
    )
}

ANY_SCENARIO = "*"  # key of a --scenario-device choice that applies to every scenario


@dataclass(frozen=True, slots=True)
class Assignment:
    """A scenario bound to its device and its start (seconds into the run)."""

    scenario: Scenario
    device_id: str
    start_s: float

    def cued(self) -> Iterator[Timed]:
        """This scenario's scripted actions, in time order, as offsets from the run's start."""
        streams = [self._cue_stream(cue) for cue in self.scenario.cues]
        if self.scenario.drops_connection:
            streams.append(iter([(self.start_s, Drop())]))
        return heapq.merge(*streams, key=lambda item: item[0])

    def _cue_stream(self, cue: Cue) -> Iterator[Timed]:
        for t in cue.times():
            yield self.start_s + t, Emit(cue.event)

    def describe(self) -> str:
        """``flood → river-001 at 5 s``."""
        return f"{self.scenario.name} → {self.device_id} at {self.start_s:g} s"


def assign(
    names: Sequence[str],
    devices: Sequence[AnyDevice],
    start_s: float,
    chosen: Mapping[str, str] | None = None,
) -> list[Assignment]:
    """Bind each named scenario to a device among ``devices`` (in registry order).

    ``chosen`` maps a scenario name (or ``"*"`` for all) to a device id. Otherwise a scenario
    that needs a kind takes the first device of that kind; one that needs no kind takes the
    first device no other scenario has taken, so ``silent,offline`` hit two devices.
    """
    chosen = chosen or {}
    by_id = {d.id: d for d in devices}
    unknown = set(chosen) - set(names) - {ANY_SCENARIO}
    if unknown:
        raise ScenarioError(f"--scenario-device names scenarios not asked for: {sorted(unknown)}")
    out: list[Assignment] = []
    taken: set[str] = set()
    # Kinded scenarios first, so "any device" ones can avoid their targets.
    for name in sorted(names, key=lambda n: SCENARIOS[n].kind is None):
        scenario = SCENARIOS[name]
        wanted = chosen.get(name, chosen.get(ANY_SCENARIO))
        if wanted is not None:
            device = by_id.get(wanted)
            if device is None:
                raise ScenarioError(f"scenario {name}: device {wanted!r} is not being simulated")
            if scenario.kind is not None and device.kind is not scenario.kind:
                raise ScenarioError(
                    f"scenario {name} needs a {scenario.kind} device; {wanted} is a {device.kind}"
                )
        else:
            device = _first_fit(scenario, devices, taken)
        taken.add(device.id)
        out.append(Assignment(scenario, device.id, start_s))
    # Report in the order the operator asked for them.
    return sorted(out, key=lambda a: list(names).index(a.scenario.name))


def _first_fit(scenario: Scenario, devices: Sequence[AnyDevice], taken: set[str]) -> AnyDevice:
    if scenario.kind is not None:
        found = next((d for d in devices if d.kind is scenario.kind), None)
        if found is None:
            raise ScenarioError(
                f"scenario {scenario.name} needs a {scenario.kind} device; none is simulated"
            )
        return found
    found = next((d for d in devices if d.id not in taken), None) or next(iter(devices), None)
    if found is None:
        raise ScenarioError(f"scenario {scenario.name} needs a device; none is simulated")
    return found
