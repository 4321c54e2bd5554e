"""Along the river: what opens upstream is told downstream, with when the water gets there.

``type: along_river`` reads no messages: it follows the transitions of its ``after`` rules
(``river_rising_fast``, ``river_over_warning``; a quality alarm). When one of them opens at a
station, each station downstream on the same river that the water reaches within ``within``
(``devices.alongway.downstream``: the segments' travel times) opens (or updates) this rule's
condition at the same device time, its detail naming the upstream station, the distance and the
expected arrival. The condition clears once every upstream condition that reached the station
has cleared (or was resolved by a person) and ``hold`` has passed since the latest expected
arrival: the wave is past, or never came.

State per downstream station (``rules.state.AlongState``): each upstream condition as
``{rule}/{device}`` → [opened, expected arrival, cleared or None], so a restart goes on from
the snapshot like every other form.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from devices.alongway import Downstream, downstream
from devices.kinds import Channel
from devices.payloads import DeviceMessage
from devices.registry import Registry
from rules.durations import format_duration
from rules.evaluator import AnyDevice, Evaluator
from rules.model import AlongRiverRule
from rules.state import AlongState, SnapshotError
from rules.transition import Reason, Transition

_MINUTE_MS = 60_000


def _clock(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%MZ")


class AlongRiverEvaluator(Evaluator[AlongRiverRule, AlongState]):
    """Compiled ``type: along_river``; fed by the engine with its ``after`` rules' transitions."""

    state_type = AlongState
    reads = ()  # no messages of its own

    def __init__(self, rule: AlongRiverRule) -> None:
        super().__init__(rule)
        self.after = frozenset(rule.after)
        self.hold = rule.hold
        self.needs_deadline = True
        self._below: dict[str, list[Downstream]] = {}

    def bind(self, registry: Registry) -> None:
        """Work out, once, which stations lie below each station within ``within``."""
        for device in registry.devices.values():
            if not self.spec.applies_to(device.kind, device.id):
                continue
            below = [
                d
                for d in downstream(registry, device.id, self.spec.within)
                if self.spec.applies_to(registry.devices[d.device_id].kind, d.device_id)
            ]
            if below:
                self._below[device.id] = below

    def kinds(self) -> set[Any]:
        return set(self.spec.kinds)

    def observe(
        self,
        st: AlongState,
        device: AnyDevice,
        channel: Channel,
        message: DeviceMessage,
        ts: int,
        newest: int,
    ) -> list[Transition]:
        return []  # never routed a message: routes() is empty

    def follow(
        self, states: dict[str, AlongState], t: Transition
    ) -> list[tuple[str, Transition | None]]:
        """The downstream stations an upstream transition touches, each with what it opened
        or updated there (None: only its state changed, e.g. an upstream clear)."""
        if t.rule_id not in self.after or t.action == "update":
            return []
        key = f"{t.rule_id}/{t.device_id}"
        out: list[tuple[str, Transition | None]] = []
        for below in self._below.get(t.device_id, ()):
            st = states.get(below.device_id)
            if t.action == "clear":
                if st is not None and key in st.sources and st.sources[key][2] is None:
                    st.sources[key][2] = t.ts_ms
                    out.append((below.device_id, None))
                continue
            if st is None:
                st = states[below.device_id] = AlongState()
            # No check against this station's last clear: that is another device's clock. An
            # upstream rule opens once per episode, so an opening is always news downstream.
            arrival = t.ts_ms + below.travel_ms
            st.sources[key] = [t.ts_ms, arrival, None]
            minutes = below.travel_ms / _MINUTE_MS
            detail = (
                f"{t.rule_id} at {t.device_id}, {below.distance_km:g} km upstream: "
                f"expected here in {minutes:.0f} min, at {_clock(arrival)}"
            )
            out.append(
                (
                    below.device_id,
                    self.activate(
                        st.life,
                        below.device_id,
                        t.ts_ms,
                        round(minutes, 1),
                        detail,
                        Reason.UPSTREAM,
                    ),
                )
            )
        return out

    def source_gone(
        self, states: dict[str, AlongState], rule_id: str, device_id: str, ts: int
    ) -> list[str]:
        """A person resolved an upstream condition: it counts as cleared at ``ts``."""
        key = f"{rule_id}/{device_id}"
        touched = []
        for below in self._below.get(device_id, ()):
            st = states.get(below.device_id)
            if st is not None and key in st.sources and st.sources[key][2] is None:
                st.sources[key][2] = ts
                touched.append(below.device_id)
        return touched

    def form_deadline(self, st: AlongState, device: AnyDevice) -> int | None:
        if not st.life.active:
            return None
        if any(src[2] is None for src in st.sources.values()):
            return None  # something upstream still holds
        ends = [max(int(src[1] or 0) + self.hold, int(src[2] or 0)) for src in st.sources.values()]
        if not ends:
            # Adopted from the store with its sources lost: hold it until the farthest water
            # it can be about has arrived (within) and passed (hold).
            return (st.life.opened_ts or 0) + self.spec.within + self.hold
        return max(ends)

    def prune(self, st: AlongState, device_id: str) -> None:
        """Restored under a changed rule: forget the sources it no longer follows (another
        ``after``, a shorter ``within``), whose clears would never reach this station."""
        for key in list(st.sources):
            rule_id, _, upstream = key.partition("/")
            below = self._below.get(upstream, ())
            if rule_id not in self.after or all(b.device_id != device_id for b in below):
                del st.sources[key]

    def decode(self, data: Any) -> AlongState:
        st = super().decode(data)
        sources = st.sources
        if not isinstance(sources, dict) or not all(
            isinstance(k, str)
            and isinstance(v, list)
            and len(v) == 3
            and all(x is None or (isinstance(x, int) and not isinstance(x, bool)) for x in v)
            for k, v in sources.items()
        ):
            raise SnapshotError("AlongState: sources must map keys to [opened, arrival, cleared]")
        return st

    def form_expire(self, st: AlongState, device: AnyDevice, now: int) -> list[Transition]:
        due = self.form_deadline(st, device)
        if due is None or now < due:
            return []
        st.sources.clear()
        cleared = self.deactivate(
            st.life,
            device.id,
            due,
            None,
            f"upstream cleared and {format_duration(self.hold)} past the expected arrival",
            Reason.PASSED,
        )
        return [cleared] if cleared is not None else []
