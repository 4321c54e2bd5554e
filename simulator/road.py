"""Behaviour of a road camera (路长制): traffic with rush hours, and what the camera spots."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import cast, get_args

from devices.payloads import DeviceMessage, RoadEvent, RoadEventType, RoadTelemetry
from devices.registry import RoadDevice
from simulator.behaviour import Condition, Conditions, Stamp
from simulator.localtime import local_hour
from simulator.plates import fake_plate
from simulator.stochastic import Drift, bump, chance, clamp, pick, plateau, poisson

CAPACITY_PER_LANE_H = 1600.0  # vehicles per lane-hour a two-lane county road can carry
JAM_ONSET_S = 90.0  # how long after an accident the traffic behind it has fully stalled
QUEUE_GROWTH_M_S = 6.0  # how fast the tail of the queue moves back during a jam
MAX_QUEUE_M = 3000.0
WRONG_WAY_SLOWEST = 0.3  # share of the speed limit a wrong-way driver keeps to
WRONG_WAY_FASTEST = 0.7


def vehicles_per_lane_hour(hour: float) -> float:
    """Typical traffic on a Hunan county road by local hour.

    Quiet at night, a daytime plateau, and two rush hours: commuters and school runs around
    08:00 and a broader evening peak around 18:00.
    """
    return (
        12.0
        + 160.0 * plateau(hour, 6.0, 22.0)
        + 420.0 * bump(hour, 8.0, 0.75)
        + 460.0 * bump(hour, 18.0, 0.85)
    )


EVENTS_PER_HOUR_QUIET = 3.0  # speeding, illegal parking, pedestrians seen by one camera
EVENTS_PER_HOUR_BUSY_EXTRA = 5.0  # added at the rush-hour peak
PEAK_PER_LANE_H = max(vehicles_per_lane_hour(h / 20) for h in range(24 * 20))


@dataclass(slots=True)
class RoadBehaviour:
    """One camera's stretch of road."""

    device: RoadDevice
    rng: random.Random
    volume_scale: float  # how busy this road is compared with a typical one
    free_speed_kmh: float  # what drivers do here on an empty road
    occupancy_noise: Drift
    speed_noise: Drift
    last_ms: int | None = None
    last_tick_ms: int | None = None  # any message, for event rates in time
    speed_kmh: float | None = None  # last average speed, for congestion events

    @classmethod
    def create(cls, device: RoadDevice, rng: random.Random) -> RoadBehaviour:
        """A camera on a road with its own traffic volume and driving habits."""
        return cls(
            device=device,
            rng=rng,
            volume_scale=rng.uniform(0.5, 1.4),
            free_speed_kmh=device.speed_limit_kmh * rng.uniform(0.85, 1.02),
            occupancy_noise=Drift(0.0, 1.0, 600.0),
            speed_noise=Drift(0.0, 2.5, 300.0),
        )

    def on_tick(self, stamp: Stamp, active: Conditions) -> DeviceMessage:
        """Traffic figures for the interval, or now and then something the camera saw."""
        busy = vehicles_per_lane_hour(local_hour(stamp.ts)) / PEAK_PER_LANE_H
        dt_s = 0.0 if self.last_tick_ms is None else max(0.0, (stamp.ts - self.last_tick_ms) / 1000)
        self.last_tick_ms = stamp.ts
        # Events come at a rate in time (3 to 8 an hour, more when busy), not a share of the
        # messages: a faster --rate must not turn a quiet road into a speeding hot spot.
        if chance(self.rng, EVENTS_PER_HOUR_QUIET + EVENTS_PER_HOUR_BUSY_EXTRA * busy, dt_s / 3600):
            return self._spontaneous_event(stamp, busy, jammed=Condition.JAM in active)
        return self._telemetry(stamp, active.get(Condition.JAM))

    def on_script(self, event: str, stamp: Stamp, active: Conditions) -> DeviceMessage:
        """A scenario's event: an ``accident``, ``congestion`` while the jam lasts, or a
        ``wrong_way`` driver."""
        if event not in get_args(RoadEventType):
            raise ValueError(f"a road camera cannot publish a {event!r} event")
        kind = cast(RoadEventType, event)
        lane = self.rng.randint(1, self.device.lanes)
        if kind == "accident":
            return RoadEvent(
                ts=stamp.ts,
                seq=stamp.seq,
                event=kind,
                lane=lane,
                plate=fake_plate(self.rng),
                confidence=round(self.rng.uniform(0.85, 0.97), 2),
            )
        if kind == "wrong_way":
            return self._wrong_way(stamp, lane)
        speed = None if self.speed_kmh is None else round(self.speed_kmh, 1)
        return RoadEvent(
            ts=stamp.ts,
            seq=stamp.seq,
            event=kind,
            lane=lane,
            speed_kmh=speed,
            confidence=round(self.rng.uniform(0.85, 0.98), 2),
        )

    def _wrong_way(self, stamp: Stamp, lane: int) -> RoadEvent:
        """A car driving against the traffic, with its plate for the traffic police."""
        # Wrong-way drivers creep along, looking for a place to turn round.
        speed = self.device.speed_limit_kmh * self.rng.uniform(WRONG_WAY_SLOWEST, WRONG_WAY_FASTEST)
        return RoadEvent(
            ts=stamp.ts,
            seq=stamp.seq,
            event="wrong_way",
            lane=lane,
            speed_kmh=round(speed, 1),
            plate=fake_plate(self.rng),
            confidence=round(self.rng.uniform(0.85, 0.97), 2),
        )

    def _telemetry(self, stamp: Stamp, jam_s: float | None) -> RoadTelemetry:
        d = self.device
        dt_s = (
            d.report_interval_s
            if self.last_ms is None
            else max(0.0, (stamp.ts - self.last_ms) / 1000)
        )
        self.last_ms = stamp.ts
        per_lane_h = vehicles_per_lane_hour(local_hour(stamp.ts)) * self.volume_scale
        ratio = per_lane_h / CAPACITY_PER_LANE_H
        # Occupancy (share of time a vehicle is over the detector) grows faster than flow.
        occupancy = 100 * (0.015 + 0.3 * ratio + 0.6 * ratio**2)
        occupancy += self.occupancy_noise.step(self.rng, dt_s, 0.0)
        # Speed falls as the road fills (Greenshields-like), with a wandering driver mood.
        speed = self.free_speed_kmh * (1 - clamp(occupancy, 0.0, 90.0) / 95) ** 0.8
        speed += self.speed_noise.step(self.rng, dt_s, 0.0)
        queue = max(0.0, occupancy - 18.0) * 12.0
        if jam_s is not None:
            stalled = min(1.0, jam_s / JAM_ONSET_S)
            per_lane_h *= 1 - 0.85 * stalled  # only a trickle squeezes past the wreck
            occupancy += (self.rng.uniform(82.0, 95.0) - occupancy) * stalled
            speed += (self.rng.uniform(3.0, 9.0) - speed) * stalled
            queue = max(queue, min(MAX_QUEUE_M, 30.0 + QUEUE_GROWTH_M_S * jam_s))
        count = poisson(self.rng, per_lane_h * d.lanes * dt_s / 3600)
        self.speed_kmh = clamp(speed, 1.0, 200.0)
        # With no vehicle in the interval there is nothing to average, except in a jam, where
        # the camera watches a queue standing on the detector.
        seen = count > 0 or jam_s is not None
        return RoadTelemetry(
            ts=stamp.ts,
            seq=stamp.seq,
            vehicle_count=count,
            avg_speed_kmh=round(self.speed_kmh, 1) if seen else None,
            occupancy_pct=round(clamp(occupancy, 0.0, 100.0), 1) if seen else 0.0,
            queue_length_m=round(queue, 1),
        )

    def _spontaneous_event(self, stamp: Stamp, busy: float, jammed: bool) -> RoadEvent:
        d, rng = self.device, self.rng
        weights: dict[RoadEventType, float] = {
            # Empty roads invite speeding; nobody speeds in a jam.
            "speeding": 0.0 if jammed else 0.6 * (1 - 0.6 * busy),
            "illegal_parking": 0.25,
            "pedestrian": 0.15 * (0.3 + busy),
        }
        event = pick(rng, weights)
        confidence = round(rng.uniform(0.8, 0.99), 2)
        if event == "speeding":
            return RoadEvent(
                ts=stamp.ts,
                seq=stamp.seq,
                event=event,
                speed_kmh=round(d.speed_limit_kmh * rng.uniform(1.12, 1.6), 1),
                lane=rng.randint(1, d.lanes),
                plate=fake_plate(rng),
                confidence=confidence,
            )
        if event == "illegal_parking":
            # Parked cars block the kerbside lane, the highest-numbered one.
            return RoadEvent(
                ts=stamp.ts,
                seq=stamp.seq,
                event=event,
                lane=d.lanes,
                plate=fake_plate(rng),
                confidence=confidence,
            )
        return RoadEvent(
            ts=stamp.ts,
            seq=stamp.seq,
            event=event,
            lane=rng.randint(1, d.lanes),
            confidence=confidence,
        )
