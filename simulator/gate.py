"""Behaviour of a community access gate or vehicle barrier (智慧小区 门禁 / 道闸)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal, cast, get_args

from devices.payloads import DeviceMessage, GateEvent, GateEventType, GateTelemetry
from devices.registry import GateDevice
from simulator.behaviour import Conditions, Stamp
from simulator.localtime import local_hour
from simulator.plates import fake_plate
from simulator.stochastic import Drift, bump, clamp, pick, plateau, poisson

Direction = Literal["in", "out"]
Method = Literal["face", "card", "qr", "password", "plate"]

FORCED_DOOR_OPEN_S = 90.0  # a forced door hangs open until a guard closes it
VEHICLE_SHARE = 0.35  # a barrier sees about a third as many cars as the gate sees people

_PEDESTRIAN_METHODS: dict[Method, float] = {"face": 0.5, "card": 0.3, "qr": 0.15, "password": 0.05}


def people_per_hour(hour: float) -> tuple[float, float]:
    """People going (in, out) per hour through a typical community gate, by local hour.

    Residents leave for work and school in the morning (out peaks 07:00-09:00) and come home
    in the evening (in peaks 17:00-20:00); a midday bump of errands, and a quiet night.
    """
    base = 4.0 + 45.0 * plateau(hour, 6.5, 22.5)
    going_in = base + 170.0 * bump(hour, 18.5, 0.9) + 25.0 * bump(hour, 12.0, 1.0)
    going_out = base + 160.0 * bump(hour, 7.9, 0.6) + 25.0 * bump(hour, 13.5, 1.2)
    return going_in, going_out


PEAK_PER_HOUR = max(sum(people_per_hour(h / 20)) for h in range(24 * 20))


@dataclass(slots=True)
class GateBehaviour:
    """One gate of one residential community."""

    device: GateDevice
    rng: random.Random
    size: float  # how many residents use this gate compared with a typical one
    battery: Drift
    last_ms: int | None = None
    forced_at_ms: int | None = None  # when the door was last forced open

    @classmethod
    def create(cls, device: GateDevice, rng: random.Random) -> GateBehaviour:
        """A gate of a community with its own size."""
        return cls(
            device=device, rng=rng, size=rng.uniform(0.5, 1.8), battery=Drift(13.5, 0.04, 3600.0)
        )

    @property
    def for_vehicles(self) -> bool:
        """Vehicle barriers count cars and read plates; pedestrian gates count people."""
        return self.device.gate_type == "vehicle"

    def on_tick(self, stamp: Stamp, active: Conditions) -> DeviceMessage:
        """Counts since the last report, or now and then one passage or refusal."""
        going_in, going_out = people_per_hour(local_hour(stamp.ts))
        busy = (going_in + going_out) / PEAK_PER_HOUR
        # Events take a larger share of the messages when many people come through.
        if self.rng.random() < 0.05 + 0.5 * busy**1.5:
            return self._spontaneous_event(stamp, going_in, going_out)
        return self._telemetry(stamp, going_in, going_out, busy)

    def on_script(self, event: str, stamp: Stamp, active: Conditions) -> DeviceMessage:
        """A scenario's event: ``tailgating`` behind a resident, or the door ``forced_open``."""
        if event not in get_args(GateEventType):
            raise ValueError(f"a gate cannot publish a {event!r} event")
        kind = cast(GateEventType, event)
        if kind in ("forced_open", "held_open"):
            self.forced_at_ms = stamp.ts
            return GateEvent(ts=stamp.ts, seq=stamp.seq, event=kind)
        # Someone follows a resident through: recorded with the resident's credential.
        return self._event(stamp, kind, "in")

    def _telemetry(
        self, stamp: Stamp, going_in: float, going_out: float, busy: float
    ) -> GateTelemetry:
        dt_s = (
            self.device.report_interval_s
            if self.last_ms is None
            else max(0.0, (stamp.ts - self.last_ms) / 1000)
        )
        self.last_ms = stamp.ts
        hours = dt_s / 3600 * self.size
        people_in = poisson(self.rng, going_in * hours)
        people_out = poisson(self.rng, going_out * hours)
        forced = (
            self.forced_at_ms is not None
            and stamp.ts - self.forced_at_ms < FORCED_DOOR_OPEN_S * 1000
        )
        # Mostly closed; caught open now and then while someone walks through.
        door_open = forced or self.rng.random() < 0.02 + 0.1 * busy
        if self.for_vehicles:
            vehicles_in = poisson(self.rng, going_in * hours * VEHICLE_SHARE)
            vehicles_out = poisson(self.rng, going_out * hours * VEHICLE_SHARE)
            people_in = people_out = 0
        else:
            vehicles_in = vehicles_out = 0
        return GateTelemetry(
            ts=stamp.ts,
            seq=stamp.seq,
            door="open" if door_open else "closed",
            people_in=people_in,
            people_out=people_out,
            vehicles_in=vehicles_in,
            vehicles_out=vehicles_out,
            battery_v=round(clamp(self.battery.step(self.rng, dt_s, 13.5), 11.5, 14.2), 2),
        )

    def _spontaneous_event(self, stamp: Stamp, going_in: float, going_out: float) -> GateEvent:
        rng = self.rng
        hour = local_hour(stamp.ts)
        weights: dict[GateEventType, float] = {
            "pass": 0.86,
            "denied": 0.06,
            # Visitors (deliveries, guests) come in the daytime.
            "visitor": 0.01 + 0.08 * plateau(hour, 9.0, 20.0),
        }
        event = pick(rng, weights)
        if event == "pass":
            share_out = going_out / (going_in + going_out)
            direction: Direction = "out" if rng.random() < share_out else "in"
        else:
            direction = "in" if rng.random() < 0.9 else "out"
        return self._event(stamp, event, direction)

    def _event(self, stamp: Stamp, event: GateEventType, direction: Direction) -> GateEvent:
        rng = self.rng
        if self.for_vehicles:
            # Barriers read the plate; a few residents still use a card, visitors a QR code.
            vehicle_method: Method = (
                "qr" if event == "visitor" else pick(rng, {"plate": 0.92, "card": 0.08})
            )
            return GateEvent(
                ts=stamp.ts,
                seq=stamp.seq,
                event=event,
                direction=direction,
                method=vehicle_method,
                plate=fake_plate(rng),
            )
        method: Method = (
            pick(rng, {"qr": 0.7, "password": 0.3})
            if event == "visitor"
            else pick(rng, _PEDESTRIAN_METHODS)
        )
        return GateEvent(
            ts=stamp.ts, seq=stamp.seq, event=event, direction=direction, method=method
        )
