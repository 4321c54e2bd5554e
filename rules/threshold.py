"""Threshold: a numeric field against a constant or a device attribute, with hysteresis.

Opens when the trigger has held on every reading for ``for`` (device time, from the first
reading of the run that met it to the reading that completes it; ``for: 0s`` opens at once).
Clears when the clear condition (default: the trigger's negation) has held for ``clear_for``.
A reading between the two (the hysteresis band) changes nothing but interrupts a pending
``for`` or ``clear_for``. While open, a reading that meets the trigger again after one that did
not is a repeat: an ``update``.

Late and out-of-order readings: a reading no newer than the newest one already evaluated for
this rule and device is ignored. The newest reading decides the current state, and a run that
must hold continuously cannot be re-judged from an older sample without the ones around it.
"""

from __future__ import annotations

import operator
from collections.abc import Callable

from devices.kinds import Channel
from devices.payloads import DeviceMessage
from rules.durations import format_duration
from rules.evaluator import AnyDevice, Evaluator, number
from rules.model import ThresholdRule
from rules.state import ThresholdState
from rules.transition import Reason, Transition

# The four comparison operators a rule may use (evaluator.compare), as functions.
_OPS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
}


class ThresholdEvaluator(Evaluator[ThresholdRule, ThresholdState]):
    """Compiled ``type: threshold``."""

    state_type = ThresholdState

    def __init__(self, rule: ThresholdRule) -> None:
        super().__init__(rule)
        self.reads = (rule.channel,)
        self.field = rule.field
        self.trigger = rule.trigger
        self.clear = rule.clear_condition
        # The operators as functions, taken once: compare() and reading the op from the
        # pydantic model cost a call and lookups per reading.
        self._meets = _OPS[self.trigger.op]
        self._clears = _OPS[self.clear.op]
        self.hold = rule.for_
        self.clear_hold = rule.clear_for
        # Each device's two reference numbers, worked out once per device object (a reloaded
        # registry brings new objects, and with them fresh numbers). Derived, not state.
        self._refs: dict[str, tuple[AnyDevice, float | None, float | None]] = {}

    def observe(
        self,
        st: ThresholdState,
        device: AnyDevice,
        channel: Channel,
        message: DeviceMessage,
        ts: int,
        newest: int,
    ) -> list[Transition]:
        x = number(message, self.field)
        if x is None or (st.last_ts is not None and ts <= st.last_ts):
            return []
        cached = self._refs.get(device.id)
        if cached is None or cached[0] is not device:
            cached = self._refs[device.id] = (
                device,
                self.trigger.reference(device),
                self.clear.reference(device),
            )
        _, at, back = cached
        if at is None or back is None:
            return []
        st.last_ts = ts
        life = st.life
        met = self._meets(x, at)
        out: list[Transition] = []
        if met:
            st.clear_since = None
            if life.active:
                if not st.above:
                    out.append(
                        self.activate(
                            life, device.id, ts, x, self._says(x, at) + " again", Reason.THRESHOLD
                        )
                    )
            else:
                if st.pending_since is None:
                    st.pending_since = ts
                held = ts - st.pending_since
                if held >= self.hold:
                    detail = self._says(x, at)
                    if self.hold:
                        detail += f" for {format_duration(held)}"
                    out.append(self.activate(life, device.id, ts, x, detail, Reason.THRESHOLD))
                    st.pending_since = None
        else:
            st.pending_since = None
            if life.active and self._clears(x, back):
                if st.clear_since is None:
                    st.clear_since = ts
                if ts - st.clear_since >= self.clear_hold:
                    st.clear_since = None
                    detail = (
                        f"{self.field} {x:g} {self.clear.op} "
                        f"{self.clear.describe_reference()} ({back:g})"
                    )
                    cleared = self.deactivate(life, device.id, ts, x, detail, Reason.CLEARED)
                    if cleared is not None:
                        out.append(cleared)
            else:
                st.clear_since = None
        st.above = met
        return out

    def _says(self, x: float, at: float) -> str:
        ref = self.trigger.describe_reference()
        shown = ref if ref == f"{at:g}" else f"{ref} ({at:g})"
        return f"{self.field} {x:g} {self.trigger.op} {shown}"
