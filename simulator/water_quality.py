"""Water temperature and quality at a river station (GB 3838-2002 parameters).

A healthy Hunan river sits in surface-water classes II-III: pH 7.2-7.8, dissolved oxygen
6-8 mg/L, NH3-N 0.2-0.6, CODMn 2-4, TP 0.05-0.15 mg/L. Each parameter drifts slowly around a
station-specific mean; runoff after rain stirs up sediment and nutrients, and a spill pushes
NH3-N, TP and CODMn past the class V limits (2.0, 0.4 and 15 mg/L) while oxygen falls below
class V's 2 mg/L.

Downstream of a spill its plume arrives diluted (the ``pollution_plume`` scenario): each value
is the station's own water plus a share of the way to the spill's, that share being
``PLUME_NEAREST`` at the first station downstream and ``PLUME_FURTHER`` times the previous
station's at each further one (tributaries and hours of self-purification on the way). At a
half, the nearest is still class IV-V, worse than a class III target; at a twentieth, the next
stays inside class III.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from simulator.localtime import day_of_year, local_hour, sunshine
from simulator.stochastic import Drift, clamp

HOUR_S = 3600.0
PLUME_NEAREST = 0.5  # the share of a spill that reaches the first station downstream
PLUME_FURTHER = 0.1  # each further station's share of the one before


@dataclass(slots=True)
class Parameter:
    """One measured quantity: a drift around a mean, kept inside a plausible band."""

    drift: Drift
    mean: float
    low: float
    high: float

    @classmethod
    def around(
        cls, mean: float, sigma: float, band: tuple[float, float], tau_h: float = 3.0
    ) -> Parameter:
        """A parameter that starts at its mean."""
        return cls(Drift(mean, sigma, tau_h * HOUR_S), mean, *band)

    def step(self, rng: random.Random, dt_s: float, shift: float = 0.0) -> float:
        """Advance by ``dt_s``; ``shift`` moves the mean for now (runoff, daily cycles)."""
        return clamp(self.drift.step(rng, dt_s, self.mean + shift), self.low, self.high)


@dataclass(frozen=True, slots=True)
class QualityReading:
    """One set of water temperature and quality values."""

    water_temp_c: float
    ph: float
    do_mgl: float
    nh3n_mgl: float
    codmn_mgl: float
    tp_mgl: float
    turbidity_ntu: float


@dataclass(slots=True)
class Chemistry:
    """pH, oxygen, nutrients and organics of one water body."""

    ph: Parameter
    do: Parameter
    nh3n: Parameter
    codmn: Parameter
    tp: Parameter

    @classmethod
    def class_ii_iii(cls, rng: random.Random) -> Chemistry:
        """A healthy station, each with its own means inside the class II-III bands."""
        return cls(
            ph=Parameter.around(rng.uniform(7.35, 7.65), 0.08, (7.2, 7.8)),
            do=Parameter.around(7.0, 0.25, (6.0, 8.0), tau_h=1.0),
            nh3n=Parameter.around(rng.uniform(0.3, 0.45), 0.06, (0.2, 0.6)),
            codmn=Parameter.around(rng.uniform(2.6, 3.2), 0.25, (2.0, 4.0)),
            tp=Parameter.around(rng.uniform(0.07, 0.1), 0.012, (0.05, 0.15)),
        )

    @classmethod
    def spill(cls, rng: random.Random) -> Chemistry:
        """A pollutant plume: every listed parameter worse than class V, from the first reading."""
        return cls(
            ph=Parameter.around(rng.uniform(6.6, 6.9), 0.08, (6.3, 7.2), tau_h=0.5),
            do=Parameter.around(rng.uniform(0.9, 1.4), 0.2, (0.3, 1.8), tau_h=0.5),
            nh3n=Parameter.around(rng.uniform(4.0, 5.5), 0.5, (2.6, 9.0), tau_h=0.5),
            codmn=Parameter.around(rng.uniform(20.0, 26.0), 2.0, (16.0, 40.0), tau_h=0.5),
            tp=Parameter.around(rng.uniform(0.7, 1.0), 0.08, (0.5, 1.6), tau_h=0.5),
        )


def seasonal_water_temp(ts_ms: int) -> float:
    """Mean water temperature for the day: about 8 °C in mid-January, 29 °C in mid-July."""
    return 18.5 - 10.5 * math.cos(2 * math.pi * (day_of_year(ts_ms) - 15) / 365)


@dataclass(slots=True)
class WaterQuality:
    """The state of a station's water, stepped forward report by report."""

    temp: Drift
    turbidity: Parameter
    healthy: Chemistry
    polluted: Chemistry | None = None  # set while a spill is passing

    @classmethod
    def typical(cls, rng: random.Random, ts_ms: int) -> WaterQuality:
        """A station in good health at ``ts_ms``."""
        return cls(
            temp=Drift(seasonal_water_temp(ts_ms), 0.3, 3 * HOUR_S),
            turbidity=Parameter.around(rng.uniform(6.0, 18.0), 2.0, (1.0, 60.0)),
            healthy=Chemistry.class_ii_iii(rng),
        )

    def step(
        self, rng: random.Random, dt_s: float, ts_ms: int, flow_ratio: float, spill: float
    ) -> QualityReading:
        """Advance by ``dt_s``; ``flow_ratio`` is flow over normal flow (runoff after rain);
        ``spill`` how much of a spill is in the water: 0 none, 1 at the spill, a share of it
        downstream (diluted)."""
        hour = local_hour(ts_ms)
        sun = sunshine(hour)
        # Water lags the air: the daily peak comes mid-afternoon, about 1.2 °C above the night.
        daily = 1.2 * math.sin(2 * math.pi * (hour - 9.0) / 24)
        temp = self.temp.step(rng, dt_s, seasonal_water_temp(ts_ms) + daily)
        runoff = max(0.0, flow_ratio - 1.0)
        if spill > 0 and self.polluted is None:
            self.polluted = Chemistry.spill(rng)
        elif spill <= 0:
            self.polluted = None
        # Warm water holds less oxygen; algae add some in the afternoon sun.
        do_shift = -0.08 * (temp - 18.0) + 0.5 * sun - 0.25
        turbidity = self.turbidity.step(rng, dt_s) * (1 + runoff) ** 1.5
        values = self._values(self.polluted or self.healthy, rng, dt_s, runoff, do_shift, spill > 0)
        if self.polluted is not None and spill < 1:
            own = self._values(self.healthy, rng, dt_s, runoff, do_shift, spilled=False)
            values = [o + spill * (p - o) for o, p in zip(own, values, strict=True)]
        ph, do, nh3n, codmn, tp = values
        return QualityReading(
            water_temp_c=round(clamp(temp, -2.0, 40.0), 2),
            ph=round(ph, 2),
            do_mgl=round(do, 2),
            nh3n_mgl=round(nh3n, 3),
            codmn_mgl=round(codmn, 2),
            tp_mgl=round(tp, 3),
            turbidity_ntu=round(clamp(turbidity * (1.0 + 2.0 * min(1.0, spill)), 0.0, 5000.0), 1),
        )

    @staticmethod
    def _values(
        chem: Chemistry,
        rng: random.Random,
        dt_s: float,
        runoff: float,
        do_shift: float,
        spilled: bool,
    ) -> list[float]:
        """pH, DO, NH3-N, CODMn and TP, stepped on (in that order: the random stream's order)."""
        return [
            chem.ph.step(rng, dt_s),
            chem.do.step(rng, dt_s, 0.0 if spilled else do_shift),
            chem.nh3n.step(rng, dt_s, 0.05 * runoff),
            chem.codmn.step(rng, dt_s, 0.6 * runoff),
            chem.tp.step(rng, dt_s, 0.03 * runoff),
        ]
