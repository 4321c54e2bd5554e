"""Scenarios: trouble injected into a device so the alert rules have something to catch.

Each scenario is plain data below: which kind of device it needs, the lasting condition it
imposes on that device's behaviour, the events it cues at fixed offsets, and whether the
connection drops. ``assign`` picks the device: the first of the kind in registry order, or the
one the operator names.

A scenario may travel beyond its target along the target's way (``spreads``): ``Downriver``
gives every station downstream that the water reaches the same condition when the water gets
there (devices/alongway.py's travel times), ``AlongSegment`` gives the next camera on the
target's road segment the same cues a few seconds later. The assignment lists the devices so
reached (``Reach``: when, and how strongly), and each of them plays the scenario from its own
start; nothing else about a device changes.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from devices.alongway import along, downstream, way_of
from devices.kinds import Kind
from devices.registry import GateDevice, Registry, RiverDevice, RoadDevice
from devices.responsibility import River
from simulator.actions import Drop, Emit, Timed
from simulator.behaviour import LEAD_S, Condition
from simulator.errors import ScenarioError
from simulator.water_quality import PLUME_FURTHER, PLUME_NEAREST

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
class Downriver:
    """The trouble flows down the target's river: each station the water reaches within
    ``within_s`` gets the scenario's condition when the water gets there, ``first`` as strong
    at the nearest station and ``each`` times the one before at every further one."""

    within_s: float = 8 * 3600.0
    first: float = 1.0
    each: float = 1.0


@dataclass(frozen=True, slots=True)
class AlongSegment:
    """The next camera along the target's road segment sees the same, ``after_s`` later."""

    after_s: float


@dataclass(frozen=True, slots=True)
class Scenario:
    """One kind of trouble."""

    name: str
    kind: Kind | None  # the kind of device it needs; None: any device
    summary: str
    condition: Condition | None = None  # imposed from the start until the end of the run
    cues: tuple[Cue, ...] = ()
    drops_connection: bool = False
    spreads: Downriver | AlongSegment | None = None  # devices it reaches beyond its target


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
            name="flood_wave",
            kind=Kind.RIVER,
            summary="a flood wave from the river's most upstream station: each station downstream"
            " passes warning when the water gets there (not guarantee), then the wave passes",
            condition=Condition.WAVE,
            spreads=Downriver(),
        ),
        Scenario(
            name="pollution_plume",
            kind=Kind.RIVER,
            summary="a spill at the river's most upstream station, its plume diluting downstream:"
            " the next station still worse than class III, those further on not",
            condition=Condition.SPILL,
            spreads=Downriver(first=PLUME_NEAREST, each=PLUME_FURTHER),
        ),
        Scenario(
            name="accident_two_cameras",
            kind=Kind.ROAD,
            summary="one accident seen by two cameras on the same road segment, 3 s apart",
            # Traffic is left as it is: only the accident itself, reported twice.
            cues=(Cue(0, "accident"),),
            spreads=AlongSegment(after_s=3),
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
class Reach:
    """A device beyond the target that a scenario reaches: ``delay_s`` after it starts, with
    ``strength`` of it (a diluted plume; 1 for the rest)."""

    device_id: str
    delay_s: float
    strength: float = 1.0


@dataclass(frozen=True, slots=True)
class Assignment:
    """A scenario bound to its device and its start (seconds into the run), and the devices
    it reaches beyond it."""

    scenario: Scenario
    device_id: str
    start_s: float
    reaches: tuple[Reach, ...] = ()

    def touches(self, device_id: str) -> bool:
        """Whether the scenario plays on ``device_id`` (its target or a device it reaches)."""
        return self._reach(device_id) is not None

    def strength(self, device_id: str) -> float:
        """How strongly it plays on ``device_id``: 1 on the target, 0 where it does not."""
        reach = self._reach(device_id)
        return 0.0 if reach is None else reach.strength

    def since(self, device_id: str, offset_s: float) -> float | None:
        """How long its condition has been in force on ``device_id`` ``offset_s`` into the run
        (negative during a lead, see behaviour.LEAD_S), or None when it is not."""
        condition, reach = self.scenario.condition, self._reach(device_id)
        if condition is None or reach is None:
            return None
        since = offset_s - (self.start_s + reach.delay_s)
        return since if since >= -LEAD_S.get(condition, 0.0) else None

    def cued(self, device_id: str | None = None) -> Iterator[Timed]:
        """This scenario's scripted actions on ``device_id`` (default its target), in time
        order, as offsets from the run's start; only the target drops its connection."""
        reach = self._reach(device_id or self.device_id)
        if reach is None:
            return iter(())
        start_s = self.start_s + reach.delay_s
        streams = [self._cue_stream(cue, start_s) for cue in self.scenario.cues]
        if self.scenario.drops_connection and reach.device_id == self.device_id:
            streams.append(iter([(self.start_s, Drop())]))
        return heapq.merge(*streams, key=lambda item: item[0])

    def _reach(self, device_id: str) -> Reach | None:
        if device_id == self.device_id:
            return Reach(device_id, 0.0)
        return next((r for r in self.reaches if r.device_id == device_id), None)

    @staticmethod
    def _cue_stream(cue: Cue, start_s: float) -> Iterator[Timed]:
        for t in cue.times():
            yield start_s + t, Emit(cue.event)

    def describe(self) -> str:
        """``flood → river-001 at 5 s``; ``..., then river-002 +4629 s, ...`` if it travels."""
        text = f"{self.scenario.name} → {self.device_id} at {self.start_s:g} s"
        if self.reaches:
            text += ", then " + ", ".join(f"{r.device_id} +{r.delay_s:g} s" for r in self.reaches)
        return text


def assign(
    names: Sequence[str],
    devices: Sequence[AnyDevice],
    start_s: float,
    chosen: Mapping[str, str] | None = None,
    registry: Registry | None = None,
) -> list[Assignment]:
    """Bind each named scenario to a device among ``devices`` (in registry order).

    ``chosen`` maps a scenario name (or ``"*"`` for all) to a device id. Otherwise a scenario
    that needs a kind takes the first device of that kind; one that needs no kind takes the
    first device no other scenario has taken, so ``silent,offline`` hit two devices. A
    scenario that travels down a river takes the most upstream station of the first river
    placed in ``registry`` (devices/alongway.py); one seen along a road segment the first
    camera of the first segment with two; both reach only devices among ``devices``.
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
            device = _first_fit(scenario, devices, taken, registry)
        taken.add(device.id)
        reaches = _reaches(scenario, device, devices, registry)
        out.append(Assignment(scenario, device.id, start_s, reaches))
    # Report in the order the operator asked for them.
    return sorted(out, key=lambda a: list(names).index(a.scenario.name))


def _first_fit(
    scenario: Scenario,
    devices: Sequence[AnyDevice],
    taken: set[str],
    registry: Registry | None,
) -> AnyDevice:
    if isinstance(scenario.spreads, Downriver) and registry is not None:
        upstream = _most_upstream(devices, registry)
        if upstream is not None:
            return upstream
    if isinstance(scenario.spreads, AlongSegment):
        first = next((d for d in devices if _segment_partner(d, devices) is not None), None)
        if first is None:
            raise ScenarioError(
                f"scenario {scenario.name} needs a road camera with another on its segment;"
                " none is simulated"
            )
        return _on_segment(first, devices)[0]
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


def _reaches(
    scenario: Scenario,
    target: AnyDevice,
    devices: Sequence[AnyDevice],
    registry: Registry | None,
) -> tuple[Reach, ...]:
    """The devices among ``devices`` that ``scenario`` reaches from ``target``."""
    spreads = scenario.spreads
    if isinstance(spreads, AlongSegment):
        partner = _segment_partner(target, devices)
        if partner is None:
            raise ScenarioError(
                f"scenario {scenario.name} needs a road camera with another on its segment;"
                f" {target.id} has none simulated"
            )
        return (Reach(partner.id, spreads.after_s),)
    if not isinstance(spreads, Downriver) or registry is None:
        return ()
    simulated = {d.id for d in devices}
    below = downstream(registry, target.id, round(spreads.within_s * 1000))
    # Strength counts every station on the way, simulated or not: the river dilutes alike.
    return tuple(
        Reach(d.device_id, d.travel_ms / 1000, spreads.first * spreads.each**n)
        for n, d in enumerate(below)
        if d.device_id in simulated
    )


def _most_upstream(devices: Sequence[AnyDevice], registry: Registry) -> AnyDevice | None:
    """The most upstream simulated station of the first simulated river with two stations."""
    simulated = {d.id: d for d in devices}
    for device in devices:
        river = way_of(registry, device.id)
        if not isinstance(device, RiverDevice) or not isinstance(river, River):
            continue
        on_river = [simulated[d.id] for d in along(registry, river) if d.id in simulated]
        if len(on_river) > 1:
            return on_river[0]
    return None


def _on_segment(camera: AnyDevice, devices: Sequence[AnyDevice]) -> list[RoadDevice]:
    """The simulated cameras on ``camera``'s road segment, first km first (itself included)."""
    if not isinstance(camera, RoadDevice) or camera.segment is None:
        return [camera] if isinstance(camera, RoadDevice) else []
    same = [d for d in devices if isinstance(d, RoadDevice) and d.segment == camera.segment]
    return sorted(same, key=lambda d: (d.km is None, d.km or 0.0, d.id))


def _segment_partner(camera: AnyDevice, devices: Sequence[AnyDevice]) -> RoadDevice | None:
    """The next camera after ``camera`` along its segment, or the one before if it is last."""
    cameras = _on_segment(camera, devices)
    if len(cameras) < 2:
        return None
    at = next(i for i, d in enumerate(cameras) if d.id == camera.id)
    return cameras[at + 1] if at + 1 < len(cameras) else cameras[at - 1]
