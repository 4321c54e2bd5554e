"""Rate of change: a field rising (or falling) faster than a limit, over a sliding window.

The rate is the least-squares slope of the readings in the window ``(t - window, t]`` ending at
the newest reading, in the field's units per ``per``; it is trusted once those readings span
``min_span`` (default half the window), so two readings seconds apart cannot make a rate out of
sensor noise. Opens above ``rise`` (or ``fall``), clears below ``clear_below`` (default half).
Readings closer together than window/32 are thinned (the newest is always kept), so the cost
stays bounded whatever the reporting rate.

Late and out-of-order readings: a reading older than the newest but inside the window is merged
into it (it is real data about that window and improves the next slope); it does not itself
trigger an evaluation, so the decision is always taken at the newest device time. Older ones
are dropped.
"""

from __future__ import annotations

from devices.kinds import Channel
from devices.payloads import DeviceMessage
from rules.durations import format_duration
from rules.evaluator import AnyDevice, Evaluator, number
from rules.model import RateOfChangeRule
from rules.state import RateState
from rules.transition import Reason, Transition
from rules.windows import add_point, fit_of, fit_rate, span, trim_points

THINNING = 32  # at most about this many points per window (one per window/32)
CAP = 4 * THINNING  # hard bound on points kept, late readings included
EXACT = 1e-9  # relative: a rate this close to a limit is at the limit, not past it (rounding)


class RateEvaluator(Evaluator[RateOfChangeRule, RateState]):
    """Compiled ``type: rate_of_change``."""

    state_type = RateState
    reads = (Channel.TELEMETRY,)

    def __init__(self, rule: RateOfChangeRule) -> None:
        super().__init__(rule)
        self.field = rule.field
        self.rising = rule.rise is not None
        self.limit = rule.limit
        self.clear_limit = rule.clear_limit
        self.window = rule.window
        self.per = rule.per
        self.needed = rule.needed_span
        self.min_gap = max(1, rule.window // THINNING)
        self.per_text = format_duration(rule.per)
        self.way = "rising" if self.rising else "falling"
        self.opens_above = self.limit * (1 + EXACT)
        self.clears_below = self.clear_limit * (1 - EXACT)

    def observe(
        self,
        st: RateState,
        device: AnyDevice,
        channel: Channel,
        message: DeviceMessage,
        ts: int,
        newest: int,
    ) -> list[Transition]:
        x = number(message, self.field)
        if x is None:
            return []
        if len(st.fit) != 7:
            st.fit = fit_of(st.points)
        if st.last_ts is not None and ts <= st.last_ts:
            if ts > st.last_ts - self.window:
                add_point(st.points, ts, x, self.min_gap, CAP, st.fit)
            return []
        st.last_ts = ts
        add_point(st.points, ts, x, self.min_gap, CAP, st.fit)
        trim_points(st.points, ts, self.window, st.fit)
        if st.points[0][0] - st.fit[0] > self.window:
            st.fit = fit_of(st.points)  # keep the sums' origin near the window
        covered = span(st.points)
        if covered < self.needed:
            return []
        rate = fit_rate(st.fit, self.per)
        if rate is None:
            return []
        signed = rate if self.rising else -rate
        life = st.life
        out: list[Transition] = []
        met = signed > self.opens_above
        if met:
            if not life.active or not st.above:
                detail = (
                    f"{self.field} {self.way} {signed:.3g} per {self.per_text} over "
                    f"{format_duration(covered)} (limit {self.limit:g})"
                )
                out.append(
                    self.activate(
                        life, device.id, ts, round(rate, 6), detail, Reason.RATE_OF_CHANGE
                    )
                )
        elif life.active and signed < self.clears_below:
            detail = (
                f"{self.field} {self.way} {signed:.3g} per {self.per_text}, "
                f"below {self.clear_limit:g}"
            )
            cleared = self.deactivate(life, device.id, ts, round(rate, 6), detail, Reason.CLEARED)
            if cleared is not None:
                out.append(cleared)
        st.above = met
        return out
