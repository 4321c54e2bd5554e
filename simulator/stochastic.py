"""Random building blocks shared by the behaviour models.

All of them take an explicit ``random.Random`` so a device's whole history is a function of the
seed and its id, whatever order the devices run in.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


def device_rng(seed: int, device_id: str, purpose: str) -> random.Random:
    """An independent random stream for one device and one purpose.

    String seeds are hashed with SHA-512 by ``random.Random``, so the stream does not depend on
    PYTHONHASHSEED, and separate purposes (behaviour, schedule) do not disturb each other: a
    different --rate changes when a device speaks, not what its river does.
    """
    return random.Random(f"{seed}:{device_id}:{purpose}")


def clamp(value: float, low: float, high: float) -> float:
    """``value`` limited to ``[low, high]``."""
    return min(high, max(low, value))


def bump(x: float, centre: float, width: float) -> float:
    """A Gaussian bump of height 1 at ``centre``: the shape of a rush hour."""
    return math.exp(-0.5 * ((x - centre) / width) ** 2)


def plateau(hour: float, start: float, end: float, edge: float = 0.75) -> float:
    """About 1 between ``start`` and ``end`` hours, 0 outside, with smooth edges of ``edge`` h."""
    rise = 1 / (1 + math.exp(-(hour - start) / (edge / 4)))
    fall = 1 / (1 + math.exp((hour - end) / (edge / 4)))
    return rise * fall


def poisson(rng: random.Random, mean: float) -> int:
    """A Poisson-distributed count: arrivals of independent people or vehicles."""
    if mean <= 0:
        return 0
    if mean > 30:
        # The normal approximation is good here and avoids a long multiplication loop.
        return max(0, round(rng.gauss(mean, math.sqrt(mean))))
    # Knuth's method: multiply uniforms until the product drops below e^-mean.
    limit = math.exp(-mean)
    count, product = 0, rng.random()
    while product > limit:
        count += 1
        product *= rng.random()
    return count


def chance(rng: random.Random, rate_per_s: float, dt_s: float) -> bool:
    """Whether an event with a constant ``rate_per_s`` happens within ``dt_s`` seconds."""
    return rng.random() < 1 - math.exp(-max(0.0, rate_per_s) * max(0.0, dt_s))


def pick(rng: random.Random, weights: Mapping[T, float]) -> T:
    """One key of ``weights``, chosen with probability proportional to its weight."""
    keys = list(weights)
    return rng.choices(keys, weights=[weights[k] for k in keys])[0]


@dataclass(slots=True)
class Drift:
    """A quantity that wanders around a mean and is pulled back to it (Ornstein-Uhlenbeck).

    Successive readings are correlated over ``tau_s``, so a sensor value moves continuously
    instead of jumping around the mean at every report, whatever the reporting interval.
    """

    value: float
    sigma: float  # long-run standard deviation around the mean
    tau_s: float  # how long the process remembers where it was

    def step(self, rng: random.Random, dt_s: float, mean: float) -> float:
        """Advance by ``dt_s`` seconds toward ``mean`` and return the new value."""
        keep = math.exp(-max(0.0, dt_s) / self.tau_s)
        shock = self.sigma * math.sqrt(1 - keep * keep) * rng.gauss(0.0, 1.0)
        self.value = mean + (self.value - mean) * keep + shock
        return self.value
