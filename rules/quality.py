"""Water quality: the GB 3838-2002 class of each sample, against a configured class.

Each telemetry message carrying any of the table's parameters is one sample; its class is the
worst over the parameters present (``rules.waterquality.classify``). Opens when the class is
worse than ``worse_than``; an ``update`` when a later sample is worse still than the worst of
the episode (not on every bad sample); clears when a sample is at or better than ``worse_than``.

Late and out-of-order samples: a sample no newer than the newest one evaluated is ignored, as
the newest sample says what the water is like now.
"""

from __future__ import annotations

from devices.kinds import Channel
from devices.payloads import DeviceMessage
from rules.evaluator import AnyDevice, Evaluator
from rules.model import WaterQualityRule
from rules.state import QualityState
from rules.transition import Reason, Transition
from rules.waterquality import TABLE, WaterClass, classify


class QualityEvaluator(Evaluator[WaterQualityRule, QualityState]):
    """Compiled ``type: water_quality``."""

    state_type = QualityState
    reads = (Channel.TELEMETRY,)

    def __init__(self, rule: WaterQualityRule) -> None:
        super().__init__(rule)
        self.limit = rule.worse_than
        self.limit_text = f"class {rule.worse_than.name}"

    def observe(
        self,
        st: QualityState,
        device: AnyDevice,
        channel: Channel,
        message: DeviceMessage,
        ts: int,
        newest: int,
    ) -> list[Transition]:
        if st.last_ts is not None and ts <= st.last_ts:
            return []
        # The sample and its class in one pass over the table (worst_class, inline: this runs
        # on every river reading).
        values: dict[str, float] = {}
        cls: WaterClass | None = None
        for row in TABLE:
            value = getattr(message, row.field, None)
            if value is not None:
                values[row.field] = value
                found = row.class_of(value)
                if cls is None or found > cls:
                    cls = found
        if cls is None:
            return []
        st.last_ts = ts
        life = st.life
        limit = self.limit_text
        if cls > self.limit:
            worst = WaterClass(st.worst) if st.worst is not None else None
            if life.active and worst is not None and cls <= worst:
                return []
            st.worst = int(cls)
            detail = f"{classify(values).describe(values)} (worse than {limit})"
            return [self.activate(life, device.id, ts, cls.label, detail, Reason.WATER_QUALITY)]
        if not life.active:
            return []
        st.worst = None
        detail = f"back to {cls.label_en} (at or better than {limit})"
        cleared = self.deactivate(life, device.id, ts, cls.label, detail, Reason.CLEARED)
        return [cleared] if cleared is not None else []
