"""Partitions on a clustered broker: the broker's hash, and the topic as the broker delivers it.

The same assignment measured on nats-server 2.15.1 (tests/integration/test_nats_cluster.py
checks every device of the example city against the real broker).
"""

from __future__ import annotations

import re

import pytest

from devices.kinds import Channel, Kind
from devices.partitions import fnv1a_32, partition_of
from devices.topics import DeviceTopic, TopicError, parse_device_topic


def test_fnv1a_32_reference_values() -> None:
    # The published FNV-1a test vectors.
    assert fnv1a_32(b"") == 0x811C9DC5
    assert fnv1a_32(b"a") == 0xE40C292C
    assert fnv1a_32(b"foobar") == 0xBF9CF968


def test_partitions_as_the_broker_assigned_them() -> None:
    # Measured on nats-server with {{partition(4,2)}}: dev1→3, dev2→2, dev3→1, dev4→0, dev5→3.
    assert [partition_of(f"dev{i}", 4) for i in range(1, 6)] == [3, 2, 1, 0, 3]
    with pytest.raises(ValueError):
        partition_of("dev1", 0)


def test_a_partitioned_topic_is_parsed_and_its_partition_checked() -> None:
    p = partition_of("river-zj-0001", 16)
    topic = f"iot/{p}/river/river-zj-0001/telemetry"
    assert parse_device_topic(topic, 16) == DeviceTopic(
        Kind.RIVER, "river-zj-0001", Channel.TELEMETRY
    )
    with pytest.raises(TopicError, match=r"partition '\d+' is not river-zj-0001's"):
        parse_device_topic(f"iot/{(p + 1) % 16}/river/river-zj-0001/telemetry", 16)
    with pytest.raises(TopicError, match=re.escape("not iot/{p}")):
        parse_device_topic("iot/river/river-zj-0001/telemetry", 16)  # not as the broker sends
    with pytest.raises(TopicError, match=re.escape("not iot/{kind}")):
        parse_device_topic(topic)  # a partition token where no broker puts one
