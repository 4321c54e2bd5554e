"""Water quality: a station's GB 3838-2002 class, assessed as the standard's practice does.

The parameters come at different paces: the pH and DO probes report every few minutes, the
NH3-N, CODMn and TP analysers once a cycle of hours. So a message is not the water's class:
each sample updates the parameters it carries, and the station's class at the sample's time is
the worst over every parameter whose newest value is still valid then (``valid_for``, per
parameter). A pH+DO sample cannot clear what NH3-N opened while that NH3-N value stands.

Against ``worse_than``: a class, or ``target``, the station's own ``target_class`` (水功能区
目标); a station without one is judged against ``default_target``, or, without that, not at
all (``rules.checks`` makes it an error at load). Opens when
the class is worse; an ``update`` when worse still than the worst of the episode (not on every
bad sample); clears when the class is at or better.

Expiry holds, it never clears: while the condition holds, a value worse than the limit counts
until a newer value of that parameter replaces it, however old it is — an alarm must not
vanish because an analyser stopped (a silence rule's ``channels`` finds a stopped analyser;
a person may resolve it). Expired values never open anything. After a person's resolve, values
measured before it do not reopen it: the next new value that is still bad does. A condition
open with no values on record (a snapshot from before they were kept, or an alert adopted from
the store) clears only once every parameter has reported a value: its cause is unknown.

Late samples: one no newer than the newest judged is not judged; the parameters it carries
that are newer than those on record are recorded (the next sample is judged with them).
"""

from __future__ import annotations

from devices.kinds import Channel
from devices.payloads import DeviceMessage
from rules.durations import format_duration
from rules.evaluator import AnyDevice, Evaluator
from rules.model import WaterQualityRule
from rules.state import QualityState
from rules.transition import Reason, Transition
from rules.waterquality import FIELDS, TABLE, Limits, WaterClass

_MINUTE = 60_000
_BY_NAME = {c.name: c for c in WaterClass if c is not WaterClass.WORSE_THAN_V}

# One parameter in the assessment: its table row, value, class, and when it was measured if it
# is held (its window has passed, but nothing newer has replaced a value worse than the limit).
Counted = tuple[Limits, float, WaterClass, int | None]


class QualityEvaluator(Evaluator[WaterQualityRule, QualityState]):
    """Compiled ``type: water_quality``."""

    state_type = QualityState
    reads = (Channel.TELEMETRY,)

    def __init__(self, rule: WaterQualityRule) -> None:
        super().__init__(rule)
        self.fixed = rule.worse_than if isinstance(rule.worse_than, WaterClass) else None
        self.default = rule.default_target
        self.windows = {row.field: rule.valid_for.window(row.field) for row in TABLE}

    def limit_of(self, device: AnyDevice) -> WaterClass | None:
        """The class the device's water is judged against, or None (no target class)."""
        if self.fixed is not None:
            return self.fixed
        target = getattr(device, "target_class", None)
        return self.default if target is None else _BY_NAME[target]

    def observe(
        self,
        st: QualityState,
        device: AnyDevice,
        channel: Channel,
        message: DeviceMessage,
        ts: int,
        newest: int,
    ) -> list[Transition]:
        limit = self.limit_of(device)
        if limit is None:
            return []
        life = st.life
        if not life.active:
            if st.pending:
                st.pending = []  # the episode of unknown cause is over (a person resolved it)
        elif not st.measured and not st.pending:
            st.pending = list(FIELDS)  # open, cause unknown: see every parameter first
        if not _record(st, message, ts):
            return []
        if st.last_ts is not None and ts <= st.last_ts:
            return []  # late: recorded above, judged with the next sample
        st.last_ts = ts
        counted = self._counted(st, limit, ts)
        if not counted:
            return []
        cls = max(c[2] for c in counted)
        against = self._against(limit)
        if cls > limit:
            worst = WaterClass(st.worst) if st.worst is not None else None
            if life.active and worst is not None and cls <= worst:
                return []
            st.worst = int(cls)
            detail = f"{cls.label_en}: {_culprits(counted, limit, ts)} (worse than {against})"
            return [self.activate(life, device.id, ts, cls.label, detail, Reason.WATER_QUALITY)]
        if not life.active or st.pending:
            return []
        st.worst = None
        detail = f"back to {cls.label_en} (at or better than {against})"
        cleared = self.deactivate(life, device.id, ts, cls.label, detail, Reason.CLEARED)
        return [cleared] if cleared is not None else []

    def _against(self, limit: WaterClass) -> str:
        return f"class {limit.name}" if self.fixed is not None else f"target class {limit.name}"

    def _counted(self, st: QualityState, limit: WaterClass, ts: int) -> list[Counted]:
        """The parameters the station is judged on at ``ts`` (see the module docstring)."""
        life = st.life
        active = life.active
        # Not active: what was measured up to the last clear belongs to the closed episode
        # (after a person's resolve it must not reopen; after an automatic clear it was good).
        since = None if active else life.cleared_ts
        out: list[Counted] = []
        for row in TABLE:
            at = st.measured.get(row.field)
            if at is None:
                continue
            value = st.values[row.field]
            cls = row.class_of(value)
            if ts - at <= self.windows[row.field]:
                if since is None or at > since:
                    out.append((row, value, cls, None))
            elif active and cls > limit:
                out.append((row, value, cls, at))
        return out


def _record(st: QualityState, message: DeviceMessage, ts: int) -> bool:
    """Keep the table's parameters the sample carries that are newer than those on record;
    whether it carries any."""
    carried = False
    for field in FIELDS:
        value = getattr(message, field, None)
        if value is None:
            continue
        carried = True
        at = st.measured.get(field)
        if at is None or ts > at:
            st.values[field] = value
            st.measured[field] = ts
            if field in st.pending:
                st.pending.remove(field)
    return carried


def _culprits(counted: list[Counted], limit: WaterClass, ts: int) -> str:
    """``"NH3-N 2.3 mg/L class 劣Ⅴ; TP 0.35 mg/L class V"``: the parameters worse than the
    limit, worst first (the table's order among equals), each held one with its age."""
    bad = sorted((c for c in counted if c[2] > limit), key=lambda c: -c[2])
    parts = []
    for row, value, cls, held_since in bad:
        text = f"{row.reading(value)} class {cls.label}"
        if held_since is not None:
            age = format_duration((ts - held_since) // _MINUTE * _MINUTE)
            text += f" ({age} old, no newer value)"
        parts.append(text)
    return "; ".join(parts)
