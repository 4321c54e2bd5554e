"""How a river's level answers rain: a lagged rise, then a recession back to normal.

Two linear reservoirs in series (a Nash cascade) are the textbook minimal catchment: rain fills
the first (soil and tributaries), which drains into the second (the channel), whose content is
the level above normal. The level therefore peaks a few hours after the rain and recedes
exponentially toward the station's ``normal_level_m``.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_SUBSTEP_S = 300.0  # explicit Euler is stable and accurate well below the time constant


@dataclass(slots=True)
class Catchment:
    """Rain in, level above normal out."""

    gain_m_per_mm: float  # level eventually added by each mm of rain (before it recedes)
    tau_s: float  # time constant of each reservoir: sets the lag and the recession
    upstream_m: float = 0.0  # water on its way (first reservoir), in metres of level
    excess_m: float = 0.0  # water in the channel: the level above normal

    def step(self, rain_mm: float, dt_s: float) -> float:
        """Take ``rain_mm`` falling evenly over ``dt_s`` seconds; return the level excess."""
        remaining = max(0.0, dt_s)
        inflow = self.gain_m_per_mm * rain_mm / remaining if remaining else 0.0
        if not remaining:
            self.upstream_m += self.gain_m_per_mm * rain_mm
        while remaining > 0:
            h = min(MAX_SUBSTEP_S, remaining)
            to_channel = self.upstream_m / self.tau_s
            self.upstream_m += (inflow - to_channel) * h
            self.excess_m += (to_channel - self.excess_m / self.tau_s) * h
            remaining -= h
        return self.excess_m

    def hold_at(self, excess_m: float) -> None:
        """Force the channel to ``excess_m`` (a scenario), keeping it consistent afterwards.

        The upstream reservoir is filled to match, so when the scenario ends the level recedes
        from where it was instead of dropping back in one report.
        """
        self.excess_m = excess_m
        self.upstream_m = max(self.upstream_m, excess_m)
