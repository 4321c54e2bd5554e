"""Which partition a device belongs to on a clustered broker (issue 16).

The NATS broker maps each device topic ``iot.{kind}.{id}.{channel}`` to
``iot.{p}.{kind}.{id}.{channel}`` with ``{{partition(P,2)}}``: the FNV-1a 32-bit hash of the
device id, modulo P. The same function here lets broker-config write each device's exact
partition into its permissions (a device may publish only there) and lets the consumer check
that a message arrived in the partition of the device it names. A test checks it against
the real broker.
"""

from __future__ import annotations

_FNV_OFFSET = 0x811C9DC5
_FNV_PRIME = 0x01000193


def fnv1a_32(data: bytes) -> int:
    """The 32-bit FNV-1a hash (what nats-server's ``partition`` mapping uses)."""
    h = _FNV_OFFSET
    for byte in data:
        h = ((h ^ byte) * _FNV_PRIME) & 0xFFFFFFFF
    return h


def partition_of(device_id: str, partitions: int) -> int:
    """The partition (0 … ``partitions`` − 1) the broker puts ``device_id``'s messages in."""
    if partitions < 1:
        raise ValueError(f"partitions must be at least 1, not {partitions}")
    return fnv1a_32(device_id.encode()) % partitions
