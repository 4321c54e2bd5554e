"""Pydantic models of what devices publish (docs/payloads.md).

Device payloads are lenient about extra keys (firmware adds diagnostics; they are ignored and
never stored) and strict about the keys they declare: types are not coerced ("3" is not 3),
numbers must be finite and inside their physical range.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from devices.kinds import Channel, Kind


def _to_epoch_ms(value: Any) -> int:
    """Accept epoch milliseconds (number) or an RFC 3339 string with an offset."""
    if isinstance(value, bool):
        raise ValueError("ts must be epoch milliseconds or an RFC 3339 string, not a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError("ts must be finite")
        return int(value)
    if isinstance(value, str) and len(value) <= 40:
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError("ts string is not RFC 3339") from None
        if parsed.tzinfo is None:
            raise ValueError("ts string has no UTC offset")
        return int(parsed.timestamp() * 1000)
    raise ValueError("ts must be epoch milliseconds or an RFC 3339 string")


# Epoch ms between 2000-01-01 and 2100-01-01: anything outside is a broken clock, not data.
EpochMs = Annotated[
    int, BeforeValidator(_to_epoch_ms), Field(ge=946_684_800_000, le=4_102_444_800_000)
]
Count = Annotated[int, Field(ge=0, le=1_000_000)]
Plate = Annotated[str, Field(min_length=1, max_length=16)]
BatteryV = Annotated[float, Field(ge=0, le=60)]


class Payload(BaseModel):
    """Fields every device message has."""

    model_config = ConfigDict(extra="ignore", strict=True, allow_inf_nan=False, frozen=True)

    ts: EpochMs
    seq: Annotated[int, Field(ge=0, le=2**53)] | None = None


class GateTelemetry(Payload):
    """Periodic report of an access gate: door state and counts since the last report."""

    door: Literal["open", "closed"]
    people_in: Count
    people_out: Count
    vehicles_in: Count
    vehicles_out: Count
    battery_v: BatteryV | None = None


GateEventType = Literal["pass", "denied", "forced_open", "held_open", "tailgating", "visitor"]


class GateEvent(Payload):
    """A discrete event at a gate; the plate is hashed before it is stored."""

    event: GateEventType
    direction: Literal["in", "out"] | None = None
    method: Literal["face", "card", "qr", "password", "plate"] | None = None
    plate: Plate | None = None


RIVER_FIELDS = (
    "water_level_m",
    "flow_m3s",
    "rainfall_mm",
    "water_temp_c",
    "ph",
    "do_mgl",
    "nh3n_mgl",
    "codmn_mgl",
    "tp_mgl",
    "turbidity_ntu",
    "battery_v",
)


class RiverTelemetry(Payload):
    """A river station's measurements; any subset, at least one."""

    # Level is an elevation above the national datum (Hunan's rivers sit at 30-500 m).
    water_level_m: Annotated[float, Field(ge=-100, le=9000)] | None = None
    flow_m3s: Annotated[float, Field(ge=0, le=1_000_000)] | None = None
    rainfall_mm: Annotated[float, Field(ge=0, le=1000)] | None = None
    water_temp_c: Annotated[float, Field(ge=-5, le=50)] | None = None
    ph: Annotated[float, Field(ge=0, le=14)] | None = None
    do_mgl: Annotated[float, Field(ge=0, le=50)] | None = None
    nh3n_mgl: Annotated[float, Field(ge=0, le=1000)] | None = None
    codmn_mgl: Annotated[float, Field(ge=0, le=1000)] | None = None
    tp_mgl: Annotated[float, Field(ge=0, le=100)] | None = None
    turbidity_ntu: Annotated[float, Field(ge=0, le=10_000)] | None = None
    battery_v: BatteryV | None = None

    @model_validator(mode="after")
    def _at_least_one(self) -> RiverTelemetry:
        if all(getattr(self, name) is None for name in RIVER_FIELDS):
            raise ValueError(f"river telemetry needs at least one of {', '.join(RIVER_FIELDS)}")
        return self


class RoadTelemetry(Payload):
    """A road camera's traffic figures for its reporting interval."""

    vehicle_count: Count
    avg_speed_kmh: Annotated[float, Field(ge=0, le=300)] | None = None
    occupancy_pct: Annotated[float, Field(ge=0, le=100)] | None = None
    queue_length_m: Annotated[float, Field(ge=0, le=100_000)] | None = None


RoadEventType = Literal[
    "speeding", "wrong_way", "accident", "congestion", "pedestrian", "illegal_parking", "obstacle"
]


class RoadEvent(Payload):
    """A discrete event seen by a road camera."""

    event: RoadEventType
    speed_kmh: Annotated[float, Field(ge=0, le=400)] | None = None
    lane: Annotated[int, Field(ge=1, le=16)] | None = None
    plate: Plate | None = None
    confidence: Annotated[float, Field(ge=0, le=1)] | None = None


class Status(BaseModel):
    """Retained ``status`` message; the broker publishes the last will ``{"online": false}``.

    ``ts`` is optional because a last will is composed when the device connects, not when it
    goes away: without ``ts`` the receive time stands in.
    """

    model_config = ConfigDict(extra="ignore", strict=True, allow_inf_nan=False, frozen=True)

    online: bool
    ts: EpochMs | None = None
    seq: Annotated[int, Field(ge=0, le=2**53)] | None = None
    reason: Annotated[str, Field(max_length=64)] | None = None


DeviceMessage = GateTelemetry | GateEvent | RiverTelemetry | RoadTelemetry | RoadEvent | Status

# Which model validates which (kind, channel); kinds without events have no entry.
SCHEMAS: dict[tuple[Kind, Channel], type[DeviceMessage]] = {
    (Kind.GATE, Channel.TELEMETRY): GateTelemetry,
    (Kind.GATE, Channel.EVENT): GateEvent,
    (Kind.RIVER, Channel.TELEMETRY): RiverTelemetry,
    (Kind.ROAD, Channel.TELEMETRY): RoadTelemetry,
    (Kind.ROAD, Channel.EVENT): RoadEvent,
    (Kind.GATE, Channel.STATUS): Status,
    (Kind.RIVER, Channel.STATUS): Status,
    (Kind.ROAD, Channel.STATUS): Status,
}


def schema_for(kind: Kind, channel: Channel) -> type[DeviceMessage] | None:
    """The payload model for a topic's kind and channel, or None if that pair has none."""
    return SCHEMAS.get((kind, channel))
