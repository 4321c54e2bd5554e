"""MQTT topic grammar (docs/payloads.md): ``iot/{kind}/{device_id}/{channel}``, ``alerts/...``."""

from __future__ import annotations

import re
from typing import NamedTuple

from devices.kinds import Channel, Kind, Level
from devices.partitions import partition_of

# Ids travel in topics, InfluxDB tags and file names: keep them to a safe alphabet so none of
# those needs escaping and no id can smuggle a topic wildcard or separator.
ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"
_ID = re.compile(ID_PATTERN)

DEVICE_TOPIC_FILTER = "iot/+/+/+"
# On a clustered broker the topic gains the device's partition (devices/partitions.py).
PARTITIONED_TOPIC_FILTER = "iot/+/+/+/+"


class TopicError(ValueError):
    """A topic that is not ``iot/{kind}/{device_id}/{channel}``."""


class DeviceTopic(NamedTuple):
    """A parsed device topic; kind and device id come from here, never from the payload."""

    kind: Kind
    device_id: str
    channel: Channel


_KINDS = {k.value: k for k in Kind}
_CHANNELS = {c.value: c for c in Channel}


def parse_device_topic(topic: str, partitions: int | None = None) -> DeviceTopic:
    """Parse ``iot/{kind}/{device_id}/{channel}``; raise TopicError naming what is wrong.

    With ``partitions`` (a clustered broker), the topic as the broker delivers it:
    ``iot/{p}/{kind}/{device_id}/{channel}``, where ``p`` must be the device's partition —
    a message in another partition would be judged by a worker that does not own the device.
    """
    parts = topic.split("/")
    if partitions is not None:
        if len(parts) != 5 or parts[0] != "iot":
            raise TopicError(f"not iot/{{p}}/{{kind}}/{{device_id}}/{{channel}}: {topic[:200]!r}")
        _, p, kind, device_id, channel = parts
        if not _ID.fullmatch(device_id):
            raise TopicError(f"device id not in {ID_PATTERN}: {device_id[:64]!r}")
        if p != str(partition_of(device_id, partitions)):
            raise TopicError(
                f"partition {p[:16]!r} is not {device_id}'s "
                f"({partition_of(device_id, partitions)} of {partitions})"
            )
        parts = [parts[0], kind, device_id, channel]
    if len(parts) != 4 or parts[0] != "iot":
        raise TopicError(f"not iot/{{kind}}/{{device_id}}/{{channel}}: {topic[:200]!r}")
    _, kind, device_id, channel = parts
    if kind not in _KINDS:
        raise TopicError(f"unknown kind {kind[:64]!r}")
    if channel not in _CHANNELS:
        raise TopicError(f"unknown channel {channel[:64]!r}")
    if not _ID.fullmatch(device_id):
        raise TopicError(f"device id not in {ID_PATTERN}: {device_id[:64]!r}")
    return DeviceTopic(_KINDS[kind], device_id, _CHANNELS[channel])


def device_topic(kind: Kind, device_id: str, channel: Channel) -> str:
    """Build the topic a device publishes on."""
    if not _ID.fullmatch(device_id):
        raise TopicError(f"device id not in {ID_PATTERN}: {device_id!r}")
    return f"iot/{kind.value}/{device_id}/{channel.value}"


def shared_filter(group: str, topic_filter: str = DEVICE_TOPIC_FILTER) -> str:
    """The shared-subscription form of a filter, so several ingest processes split the load."""
    return f"$share/{group}/{topic_filter}"


def alert_topic(level: Level, area_id: str) -> str:
    """Build ``alerts/{level}/{area_id}``, where grid workers and their superiors listen."""
    if not _ID.fullmatch(area_id):
        raise TopicError(f"area id not in {ID_PATTERN}: {area_id!r}")
    return f"alerts/{level.value}/{area_id}"
