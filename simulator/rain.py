"""Rain over a river station: dry spells and showers as a two-state Markov process."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from simulator.stochastic import chance, clamp

# Hunan in the wet season: a shower every half day or so, lasting a couple of hours, mostly
# light to moderate (median ~3 mm/h) with the occasional downpour from the lognormal tail.
MEAN_DRY_H = 12.0
MEAN_SHOWER_H = 2.0
MEDIAN_INTENSITY_MM_H = 3.0
INTENSITY_SPREAD = 0.9  # sigma of log(intensity)


@dataclass(slots=True)
class RainProcess:
    """Whether it rains and how hard; ``step`` returns the rain that fell in the step."""

    raining: bool = False
    intensity_mm_h: float = 0.0

    def step(self, rng: random.Random, dt_s: float) -> float:
        """Rain depth in mm over the next ``dt_s`` seconds, then maybe start or stop a shower."""
        depth = self.intensity_mm_h * dt_s / 3600 if self.raining else 0.0
        if self.raining:
            # Intensity wanders within a shower (a random walk in log space) so a shower has
            # bursts and lulls instead of a flat rate.
            wobble = rng.gauss(0.0, 0.25 * math.sqrt(dt_s / 600))
            self.intensity_mm_h = clamp(self.intensity_mm_h * math.exp(wobble), 0.2, 60.0)
            if chance(rng, 1 / (MEAN_SHOWER_H * 3600), dt_s):
                self.raining, self.intensity_mm_h = False, 0.0
        elif chance(rng, 1 / (MEAN_DRY_H * 3600), dt_s):
            self.raining = True
            self.intensity_mm_h = clamp(
                rng.lognormvariate(math.log(MEDIAN_INTENSITY_MM_H), INTENSITY_SPREAD), 0.2, 60.0
            )
        return depth

    def downpour(self, rng: random.Random, dt_s: float) -> float:
        """Torrential rain (a flood scenario): 50-90 mm/h, whatever the Markov state says."""
        self.raining = True
        self.intensity_mm_h = rng.uniform(50.0, 90.0)
        return self.intensity_mm_h * dt_s / 3600
