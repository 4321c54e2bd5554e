"""Which registry devices a run simulates."""

from __future__ import annotations

from collections.abc import Sequence

from devices.kinds import Kind
from devices.registry import GateDevice, Registry, RiverDevice, RoadDevice

AnyDevice = GateDevice | RiverDevice | RoadDevice


def transport_of(device: AnyDevice) -> str:
    """How the device reports: ``mqtt``, or the field protocol the registry names for it."""
    protocol = device.protocol if isinstance(device, RiverDevice) else None
    return protocol or "mqtt"


def select_devices(
    registry: Registry,
    kinds: Sequence[Kind],
    count: int | None = None,
    transports: Sequence[str] = ("mqtt",),
) -> list[AnyDevice]:
    """The first ``count`` devices of ``kinds`` that report over one of ``transports``,
    balanced across the kinds, in registry order.

    Taking kinds in turn means ``--devices 10`` on a registry that lists all its gates first
    still simulates some rivers and roads; a kind that runs out leaves its turns to the others.
    ``count`` None takes every device of the kinds.
    """
    queues = {
        k: [d for d in registry.devices.values() if d.kind is k and transport_of(d) in transports]
        for k in dict.fromkeys(kinds)
    }
    wanted = sum(len(q) for q in queues.values()) if count is None else count
    picked: set[str] = set()
    while len(picked) < wanted and any(queues.values()):
        for queue in queues.values():
            if queue and len(picked) < wanted:
                picked.add(queue.pop(0).id)
    return [d for d in registry.devices.values() if d.id in picked]
