"""A simulated device: its behaviour model, its ``seq`` counter and its scenarios.

This is where a timeline action becomes a message. It does no I/O and reads no clock, so the
MQTT publisher and the dry run used by the tests produce exactly the same messages.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from devices.kinds import Channel, Kind
from devices.payloads import DeviceMessage, GateEvent, RoadEvent, Status
from devices.registry import GateDevice, RiverDevice, RoadDevice
from devices.topics import device_topic
from simulator.actions import Emit, Tick, Timed
from simulator.behaviour import Behaviour, Condition, Stamp
from simulator.gate import GateBehaviour
from simulator.river import RiverBehaviour
from simulator.road import RoadBehaviour
from simulator.scenarios import Assignment
from simulator.stochastic import device_rng

AnyDevice = GateDevice | RiverDevice | RoadDevice

WILL_REASON = "connection lost"
STOP_REASON = "stopped"


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message ready to publish."""

    kind: Kind
    device_id: str
    channel: Channel
    payload: DeviceMessage

    @property
    def topic(self) -> str:
        """``iot/{kind}/{device_id}/{channel}``."""
        return device_topic(self.kind, self.device_id, self.channel)

    @property
    def retain(self) -> bool:
        """Status is retained so a new subscriber learns at once who is online."""
        return self.channel is Channel.STATUS

    def body(self) -> bytes:
        """The JSON payload; absent optional fields are left out, not sent as null."""
        return self.payload.model_dump_json(exclude_none=True).encode()


def make_behaviour(
    device: AnyDevice, seed: int, needs_quality: bool = False, spill_share: float = 1.0
) -> Behaviour:
    """The behaviour model for a device's kind, on the device's own random stream."""
    rng = device_rng(seed, device.id, "behaviour")
    if isinstance(device, RiverDevice):
        return RiverBehaviour.create(
            device, rng, needs_quality=needs_quality, spill_share=spill_share
        )
    if isinstance(device, RoadDevice):
        return RoadBehaviour.create(device, rng)
    return GateBehaviour.create(device, rng)


class SimulatedDevice:
    """One device: what it says, when scenarios interfere, and its message counter."""

    def __init__(self, device: AnyDevice, seed: int, assignments: Sequence[Assignment] = ()):
        self.device = device
        # The scenarios that play on it: as their target, or reached from there (a river's
        # flood wave or plume, a second camera on the road segment).
        self.assignments = tuple(a for a in assignments if a.touches(device.id))
        spills = [
            a.strength(device.id)
            for a in self.assignments
            if a.scenario.condition is Condition.SPILL
        ]
        # An HJ 212 station is a water-quality station: it always has the analyser.
        analyser = bool(spills) or getattr(device, "protocol", None) == "hj212"
        self.behaviour = make_behaviour(
            device, seed, needs_quality=analyser, spill_share=max(spills, default=1.0)
        )
        self.seq = 0  # the last seq used; the first message carries 1

    @property
    def id(self) -> str:
        """The device id (also its MQTT client identifier)."""
        return self.device.id

    @property
    def protocol(self) -> str | None:
        """The field protocol it reports in through a gateway; None: MQTT, as itself."""
        return self.device.protocol if isinstance(self.device, RiverDevice) else None

    @property
    def kind(self) -> Kind:
        """The device's kind."""
        return self.device.kind

    def cued(self) -> Iterator[Timed]:
        """Every scripted action of the device's scenarios, in time order."""
        return heapq.merge(*(a.cued(self.id) for a in self.assignments), key=lambda item: item[0])

    def conditions_at(self, offset_s: float) -> dict[Condition, float]:
        """Conditions in force ``offset_s`` into the run, each with how long it has lasted
        (negative while a condition's lead runs, behaviour.LEAD_S)."""
        active: dict[Condition, float] = {}
        for a in self.assignments:
            since = a.since(self.id, offset_s)
            if a.scenario.condition is not None and since is not None:
                active[a.scenario.condition] = since
        return active

    def act(self, action: Tick | Emit, offset_s: float, now_ms: int) -> Outgoing | None:
        """The message for a timeline action, or None if the device keeps quiet."""
        active = self.conditions_at(offset_s)
        if Condition.SILENT in active:
            return None
        stamp = self._stamp(now_ms)
        if isinstance(action, Emit):
            payload = self.behaviour.on_script(action.event, stamp, active)
        else:
            payload = self.behaviour.on_tick(stamp, active)
        channel = Channel.EVENT if isinstance(payload, GateEvent | RoadEvent) else Channel.TELEMETRY
        return Outgoing(self.kind, self.id, channel, payload)

    def status(self, now_ms: int, online: bool) -> Outgoing:
        """The retained status published at connect (online) and at a clean stop (offline)."""
        stamp = self._stamp(now_ms)
        payload = Status(
            online=online, ts=stamp.ts, seq=stamp.seq, reason=None if online else STOP_REASON
        )
        return Outgoing(self.kind, self.id, Channel.STATUS, payload)

    def goodbye(self, now_ms: int, offset_s: float) -> Outgoing | None:
        """The clean stop's offline status; None from a silent (hung) device, which says nothing."""
        if Condition.SILENT in self.conditions_at(offset_s):
            return None
        return self.status(now_ms, online=False)

    def will(self) -> Outgoing:
        """The last will: composed at connect time, so it has no ``ts`` and takes no ``seq``."""
        return Outgoing(
            self.kind, self.id, Channel.STATUS, Status(online=False, reason=WILL_REASON)
        )

    def _stamp(self, now_ms: int) -> Stamp:
        # Every published message takes the next seq, whatever its channel, so a receiver sees
        # 1, 2, 3, ... across telemetry, events and status and can spot gaps and duplicates.
        self.seq += 1
        return Stamp(ts=now_ms, seq=self.seq)
