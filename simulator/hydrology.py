"""How a river's level answers rain: a lagged rise, then a recession back to normal.

Two linear reservoirs in series (a Nash cascade) are the textbook minimal catchment: rain fills
the first (soil and tributaries), which drains into the second (the channel), whose content is
the level above normal. The level therefore peaks a few hours after the rain and recedes
exponentially toward the station's ``normal_level_m``.

A flood wave from upstream (the ``flood_wave`` scenario) is drawn instead: ``wave_level``.
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

    def release_at(self, excess_m: float) -> None:
        """Set the channel to ``excess_m`` with nothing more on its way (a flood wave from
        upstream, not local rain): once let go, the level only recedes, as a passed wave does."""
        self.excess_m = excess_m
        self.upstream_m = 0.0


# A flood wave from upstream passing a station, timed from the moment it passes the station's
# warning level: its front rises from the level it finds to warning, then on to a crest halfway
# between warning and guarantee (it never reaches guarantee), holds, and falls to halfway between
# normal and warning, from where the river recedes on its own. Steep by nature's standards (a
# flash flood), so that a run of a few hours shows it at every station of a river.
WAVE_FRONT_S = 30 * 60.0  # the front: from the level it finds up to warning
WAVE_TO_CREST_S = 15 * 60.0  # from warning up to the crest
WAVE_CREST_S = 15 * 60.0  # the crest held
WAVE_FALL_S = 30 * 60.0  # from the crest down to halfway between normal and warning
WAVE_CREST_SHARE = 0.5  # the crest: this share of the way from warning to guarantee
WAVE_PASSED_S = WAVE_TO_CREST_S + WAVE_CREST_S + WAVE_FALL_S  # after warning: the wave is gone


@dataclass(frozen=True, slots=True)
class WaveLevels:
    """The levels a wave is drawn between at one station (elevations, metres)."""

    normal_m: float
    warning_m: float
    guarantee_m: float

    @property
    def crest_m(self) -> float:
        """Where the wave peaks: between warning and guarantee."""
        return self.warning_m + WAVE_CREST_SHARE * (self.guarantee_m - self.warning_m)

    @property
    def after_m(self) -> float:
        """Where the wave leaves the river: halfway between normal and warning."""
        return (self.normal_m + self.warning_m) / 2


def wave_level(
    levels: WaveLevels, since_s: float, found_m: float, found_since_s: float
) -> float | None:
    """The level ``since_s`` after the wave passes warning (negative: its front is rising), or
    None once it has passed. ``found_m`` is the level the front found, ``found_since_s`` when
    (its first report in the wave; at most 0 s, later means the front was missed)."""
    if since_s < 0:
        start_s = max(-WAVE_FRONT_S, min(found_since_s, since_s))  # < 0 here
        return found_m + (levels.warning_m - found_m) * (since_s - start_s) / -start_s
    if since_s < WAVE_TO_CREST_S:
        return levels.warning_m + (levels.crest_m - levels.warning_m) * since_s / WAVE_TO_CREST_S
    if since_s < WAVE_TO_CREST_S + WAVE_CREST_S:
        return levels.crest_m
    if since_s < WAVE_PASSED_S:
        fallen = (since_s - WAVE_TO_CREST_S - WAVE_CREST_S) / WAVE_FALL_S
        return levels.crest_m + (levels.after_m - levels.crest_m) * fallen
    return None
