"""When each device speaks: the total --rate spread evenly over the devices.

With ``n`` devices and a total rate ``R``, each device publishes every ``n / R`` seconds. The
devices are phased evenly across that interval so the broker sees a steady stream rather than
``n`` messages at once, and each tick is nudged by a little jitter, as real clocks drift.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Iterator
from dataclasses import dataclass

from simulator.actions import Tick, Timed

DEFAULT_JITTER = 0.1  # each tick moves by up to ±10% of the interval


@dataclass(frozen=True, slots=True)
class TickPlan:
    """One device's regular schedule."""

    interval_s: float
    phase_s: float  # when the first tick falls, before jitter
    jitter: float = DEFAULT_JITTER

    def times(self, rng: random.Random) -> Iterator[float]:
        """Tick times in seconds since the run started, increasing, endless.

        The jitter is added to an ideal grid rather than accumulated, so a device keeps its
        rate over a long run; with jitter under half the interval the times stay in order.
        """
        for n in itertools.count():
            nudge = rng.uniform(-self.jitter, self.jitter) * self.interval_s
            yield max(0.0, self.phase_s + n * self.interval_s + nudge)


def spread(devices: int, rate: float, jitter: float = DEFAULT_JITTER) -> list[TickPlan]:
    """Schedules for ``devices`` devices publishing ``rate`` messages per second in total."""
    if devices < 1 or rate <= 0:
        raise ValueError("need at least one device and a positive rate")
    if not 0 <= jitter < 0.5:
        raise ValueError("jitter must be in [0, 0.5) of the interval to keep ticks in order")
    interval = devices / rate
    return [TickPlan(interval, interval * (i + 0.5) / devices, jitter) for i in range(devices)]


def at_most_every(plan: TickPlan, interval_s: float) -> TickPlan:
    """``plan``, ticking at least every ``interval_s`` (a device's own reporting interval)."""
    if plan.interval_s <= interval_s:
        return plan
    return TickPlan(interval_s, plan.phase_s % interval_s, plan.jitter)


def at_least_every(plan: TickPlan, interval_s: float) -> TickPlan:
    """``plan``, ticking no more often than every ``interval_s``."""
    if plan.interval_s >= interval_s:
        return plan
    return TickPlan(interval_s, plan.phase_s, plan.jitter)


def timeline(
    ticks: Iterator[float], cued: Iterator[Timed], until_s: float | None
) -> Iterator[Timed]:
    """A device's regular ticks merged with its scenario's cues, up to ``until_s`` (exclusive).

    ``until_s`` None means the run is open-ended (it ends when cancelled).
    """
    regular: Iterator[Timed] = ((t, Tick()) for t in ticks)
    merged = heapq.merge(regular, cued, key=lambda item: item[0])
    if until_s is None:
        return merged
    return itertools.takewhile(lambda item: item[0] < until_s, merged)
