"""Turn one MQTT message into a validated device message, or a named rejection.

This is the edge where bad input becomes a value: every way a message can be wrong maps to
one ``Reason``, and the consumer never sees an exception from here.
"""

from __future__ import annotations

from enum import StrEnum
from typing import NamedTuple

from pydantic import ValidationError

from devices.kinds import Channel, Kind
from devices.payloads import DeviceMessage, schema_for
from devices.registry import GateDevice, Registry, RiverDevice, RoadDevice
from devices.topics import TopicError, parse_device_topic


class Reason(StrEnum):
    """Why a message was rejected; the dead-letter store and metrics use these names."""

    BAD_TOPIC = "bad_topic"  # not iot/{kind}/{id}/{channel}, or a channel the kind lacks
    UNKNOWN_DEVICE = "unknown_device"  # device id not in the registry
    KIND_MISMATCH = "kind_mismatch"  # topic's kind differs from the registry's
    TOO_LARGE = "too_large"  # payload over max_payload_bytes
    INVALID_JSON = "invalid_json"  # not parseable JSON (NaN/Infinity literals included)
    SCHEMA = "schema"  # JSON, but missing keys or wrong types
    OUT_OF_RANGE = "out_of_range"  # a value outside its physical range
    NOT_FINITE = "not_finite"  # NaN or ±Inf where a number belongs
    FUTURE_TIMESTAMP = "future_timestamp"  # ts further ahead than future_skew_s
    STALE_TIMESTAMP = "stale_timestamp"  # ts older than max_age_s
    WRITE_REJECTED = "write_rejected"  # InfluxDB refused the point (set by the writer)


class Rejection(NamedTuple):
    """A message that will not be stored, with why."""

    reason: Reason
    detail: str


Device = GateDevice | RiverDevice | RoadDevice


class Decoded(NamedTuple):
    """A valid message: where it came from, who sent it, what it says, and its time."""

    kind: Kind
    channel: Channel
    device: Device
    message: DeviceMessage
    ts_ms: int


_RANGE_ERRORS = frozenset({"greater_than", "greater_than_equal", "less_than", "less_than_equal"})
_JSON_ERRORS = frozenset({"json_invalid", "json_type"})


def classify(error: ValidationError) -> Rejection:
    """Map a pydantic error to the most specific reason (the first error decides)."""
    first = error.errors(include_url=False, include_input=False)[0]
    where = ".".join(str(p) for p in first["loc"]) or "payload"
    detail = f"{where}: {first['msg']}"[:300]
    kind = first["type"]
    if kind in _JSON_ERRORS:
        return Rejection(Reason.INVALID_JSON, detail)
    if kind == "finite_number":
        return Rejection(Reason.NOT_FINITE, detail)
    if kind in _RANGE_ERRORS:
        return Rejection(Reason.OUT_OF_RANGE, detail)
    return Rejection(Reason.SCHEMA, detail)


class Decoder:
    """Validates messages against the topic grammar, the registry and the payload schemas."""

    def __init__(
        self,
        registry: Registry,
        *,
        max_payload_bytes: int,
        future_skew_ms: int,
        max_age_ms: int,
    ) -> None:
        self._registry = registry
        self._max_bytes = max_payload_bytes
        self._skew_ms = future_skew_ms
        self._max_age_ms = max_age_ms

    def decode(self, topic: str, payload: bytes, now_ms: int) -> Decoded | Rejection:
        """Validate one message received at ``now_ms``."""
        # Size first: an oversize payload is rejected before anything else touches it.
        if len(payload) > self._max_bytes:
            return Rejection(Reason.TOO_LARGE, f"{len(payload)} bytes > limit of {self._max_bytes}")
        try:
            kind, device_id, channel = parse_device_topic(topic)
        except TopicError as e:
            return Rejection(Reason.BAD_TOPIC, str(e))
        device = self._registry.devices.get(device_id)
        if device is None:
            return Rejection(Reason.UNKNOWN_DEVICE, f"no device {device_id!r} in the registry")
        if device.kind is not kind:
            return Rejection(
                Reason.KIND_MISMATCH, f"{device_id} is a {device.kind}, topic says {kind}"
            )
        schema = schema_for(kind, channel)
        if schema is None:
            return Rejection(Reason.BAD_TOPIC, f"a {kind} device has no {channel} channel")
        try:
            message = schema.model_validate_json(payload)
        except ValidationError as e:
            return classify(e)
        ts_ms = message.ts if message.ts is not None else now_ms
        if ts_ms > now_ms + self._skew_ms:
            return Rejection(
                Reason.FUTURE_TIMESTAMP, f"ts is {(ts_ms - now_ms) / 1000:.0f} s in the future"
            )
        if ts_ms < now_ms - self._max_age_ms:
            return Rejection(
                Reason.STALE_TIMESTAMP, f"ts is {(now_ms - ts_ms) / 1000:.0f} s in the past"
            )
        return Decoded(kind, channel, device, message, ts_ms)
