"""The benchmark's device messages: realistic payloads of the three kinds, from every device of
``config/registry.yaml``, valid per ``devices/payloads.py``.

Each device has its own ``seq`` (from 1, across its channels) and strictly increasing ``ts``, so
every message is a distinct point in InfluxDB and the rule engine never takes one for a
redelivery. Normal traffic is chosen to raise no alert (rivers at their normal level and with
class II water, roads flowing, gate and road events no rule watches); a known fraction of the
messages are gate ``forced_open`` events, spread over all gates, each of which opens or repeats
the ``gate_forced_open`` alert of its gate — so each of them produces exactly one alert message
when repeats are told at once (``CITYSENSE_ALERT_RENOTIFY_S=0``).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any

from devices.registry import Device, GateDevice, RiverDevice, load_registry
from tests.serviceproc import REGISTRY_FILE

# The measurements device messages land in (status is not sent); the count query sums them.
MEASUREMENTS = ("gate", "gate_event", "river", "road", "road_event")
TRIGGER_EVENT = "forced_open"
TRIGGER_RULE = "gate_forced_open"

_GATE_EVENTS = ("pass", "pass", "pass", "denied", "visitor")  # no rule watches these
_ROAD_EVENTS = ("pedestrian", "illegal_parking", "obstacle")  # nor these
_PROVINCE = "湘E"


@dataclass(frozen=True, slots=True)
class Message:
    """One device message, ready to publish."""

    topic: str
    payload: bytes
    device: str
    ts: int
    trigger: bool  # a forced_open event: one alert message is expected for it


class Workload:
    """Makes messages in a fixed, seeded order: message ``k`` comes from device ``k mod n``,
    except the triggering ones, which come from the gates in turn."""

    def __init__(self, trigger_fraction: float, seed: int = 7) -> None:
        registry = load_registry(REGISTRY_FILE)
        self.devices: list[Device] = sorted(registry.devices.values(), key=lambda d: d.id)
        self.gates = [d for d in self.devices if isinstance(d, GateDevice)]
        self.trigger_fraction = trigger_fraction
        self._rng = random.Random(seed)
        self._seq: dict[str, int] = {}
        self._last_ts: dict[str, int] = {}
        self._k = 0
        self._triggers = 0

    def next(self, ts_ms: int) -> Message:
        """The next message; its ``ts`` is ``ts_ms``, or just after the device's previous one."""
        rng = self._rng
        trigger = rng.random() < self.trigger_fraction
        if trigger:
            device: Device = self.gates[self._triggers % len(self.gates)]
            self._triggers += 1
        else:
            device = self.devices[self._k % len(self.devices)]
        self._k += 1
        seq = self._seq.get(device.id, 0) + 1
        self._seq[device.id] = seq
        ts = max(ts_ms, self._last_ts.get(device.id, 0) + 1)
        self._last_ts[device.id] = ts
        channel, payload = (
            ("event", {"event": TRIGGER_EVENT}) if trigger else self._normal(device, rng)
        )
        body = {"ts": ts, "seq": seq, **payload}
        return Message(
            topic=f"iot/{device.kind.value}/{device.id}/{channel}",
            payload=json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode(),
            device=device.id,
            ts=ts,
            trigger=trigger,
        )

    def backlog(self, k: int, end_ms: int, step_ms: int = 1000) -> list[Message]:
        """``k`` messages whose device times end near ``end_ms``, ``step_ms`` apart per device
        (a device reporting every second): old enough to be in the past, young enough for the
        service's 30-day window."""
        per_device = k // len(self.devices) + 1
        start = end_ms - (per_device + 5) * step_ms
        out = []
        for i in range(k):
            # Device time advances with the message number, so it increases for every device.
            out.append(self.next(start + (i // len(self.devices)) * step_ms))
        return out

    @staticmethod
    def _normal(device: Device, rng: random.Random) -> tuple[str, dict[str, Any]]:
        """A payload of ordinary traffic: valid, realistic, and raising no alert."""
        if isinstance(device, GateDevice):
            if rng.random() < 0.3:
                event: dict[str, Any] = {
                    "event": rng.choice(_GATE_EVENTS),
                    "direction": rng.choice(("in", "out")),
                }
                if device.gate_type == "vehicle":
                    event["method"] = "plate"
                    event["plate"] = f"{_PROVINCE}{rng.randrange(10_000, 99_999)}"
                else:
                    event["method"] = rng.choice(("face", "card", "qr"))
                return "event", event
            return "telemetry", {
                "door": rng.choice(("open", "closed")),
                "people_in": rng.randrange(0, 12),
                "people_out": rng.randrange(0, 12),
                "vehicles_in": rng.randrange(0, 5),
                "vehicles_out": rng.randrange(0, 5),
                "battery_v": round(rng.uniform(12.1, 12.8), 2),
            }
        if isinstance(device, RiverDevice):
            # Normal level, a few cm of noise (no threshold, no rising trend); class II water.
            return "telemetry", {
                "water_level_m": round(device.normal_level_m + rng.uniform(-0.02, 0.02), 3),
                "flow_m3s": round(rng.uniform(80, 120), 1),
                "rainfall_mm": round(rng.uniform(0, 2), 1),
                "water_temp_c": round(rng.uniform(16, 18), 1),
                "ph": round(rng.uniform(7.0, 7.6), 2),
                "do_mgl": round(rng.uniform(7.0, 8.0), 2),
                "nh3n_mgl": round(rng.uniform(0.2, 0.4), 3),
                "codmn_mgl": round(rng.uniform(2.5, 3.5), 2),
                "tp_mgl": round(rng.uniform(0.05, 0.09), 3),
                "battery_v": round(rng.uniform(12.1, 12.8), 2),
            }
        if rng.random() < 0.2:
            return "event", {
                "event": rng.choice(_ROAD_EVENTS),
                "speed_kmh": round(rng.uniform(20, 50), 1),
                "lane": rng.randrange(1, device.lanes + 1),
                "plate": f"{_PROVINCE}{rng.randrange(10_000, 99_999)}",
                "confidence": round(rng.uniform(0.7, 0.99), 2),
            }
        return "telemetry", {
            "vehicle_count": rng.randrange(0, 60),
            "avg_speed_kmh": round(rng.uniform(35, 60), 1),
            "occupancy_pct": round(rng.uniform(10, 45), 1),
            "queue_length_m": round(rng.uniform(0, 20), 1),
        }
