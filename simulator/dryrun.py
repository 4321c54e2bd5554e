"""A run without a broker: the messages a timed run would publish, on a simulated clock.

The unit tests drive a whole simulated day through this in milliseconds; it uses the same plan,
devices and timelines as the MQTT publisher, only the clock and the network are missing.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator

from devices.registry import Registry
from simulator.actions import Action, Drop, Timed
from simulator.config import SimulationConfig
from simulator.device import Outgoing
from simulator.plan import plan_run


def _tagged(index: int, timeline: Iterator[Timed]) -> Iterator[tuple[float, int, Action]]:
    """Entries of one device's timeline with the device's index, for merging by (time, index)."""
    for t, action in timeline:
        yield t, index, action


def dry_run(
    config: SimulationConfig, registry: Registry, start_ms: int
) -> Iterator[tuple[float, Outgoing]]:
    """Yield ``(seconds into the run, message)`` in time order for a run starting at ``start_ms``.

    Like the publisher, every device says it is online at the start and offline at the end,
    except a device that dropped its connection (its last will is the broker's to send) or
    went silent (hung: it says nothing, even at the end), and a field station (its protocol
    has no status; its telemetry is what the run turns into frames).
    """
    if not config.duration:
        raise ValueError("a dry run needs a duration")
    plan = plan_run(config, registry)
    for device in plan.devices:
        if device.sim.protocol is None:
            yield 0.0, device.sim.status(start_ms, online=True)
    streams = [_tagged(i, device.timeline(config.until_s)) for i, device in enumerate(plan.devices)]
    dropped: set[int] = set()
    for t, i, action in heapq.merge(*streams, key=lambda item: (item[0], item[1])):
        if i in dropped:
            continue
        if isinstance(action, Drop):
            dropped.add(i)
            continue
        message = plan.devices[i].sim.act(action, t, start_ms + round(t * 1000))
        if message is not None:
            yield t, message
    end_ms = start_ms + round(config.duration * 1000)
    for i, device in enumerate(plan.devices):
        if i in dropped or device.sim.protocol is not None:
            continue
        goodbye = device.sim.goodbye(end_ms, config.duration)
        if goodbye is not None:
            yield config.duration, goodbye
