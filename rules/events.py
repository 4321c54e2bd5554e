"""Event match and event count in a sliding window.

``event``: opens on a matching event; each further match while open is an ``update`` (a
repeat). With ``clear_after`` it clears once that long has passed, on device time, since the
newest match; without it, it stays open until a person resolves it.

``event_count``: opens when at least ``count`` matching events fall in the window
``(t - window, t]`` (two events exactly ``window`` apart are never in one window); each further
match while the count holds is an ``update``. It clears when the window slides past enough
events that fewer than ``count`` remain, at the device time that happens
(``windows.count_drops_below_at``).

Late and out-of-order events: a late event is still an event that happened, so
- ``event``: it updates an open condition; it opens a closed one unless it is no newer than the
  last clear (it belonged to an episode that is over) or it would already have cleared by the
  device's newest time (``ts + clear_after <= newest``).
- ``event_count``: it is counted if it falls inside the current window (ending at the device's
  newest time, as for ``event``), since the window is defined on timestamps; events no newer
  than the last clear, or outside the window, are dropped — a burst an hour old opens
  nothing. A matching event at exactly the time of one already counted is taken for a copy
  of it and not counted twice — unless it has a seq and was judged at another time than it
  was stamped (a fast clock, ``rules.engine``): the engine has told copies by (seq, stamp as
  sent) already, and distinct events of a burst may be judged at the same time.
"""

from __future__ import annotations

from devices.kinds import Channel
from devices.payloads import DeviceMessage
from devices.registry import Registry
from rules.durations import format_duration
from rules.evaluator import AnyDevice, Evaluator
from rules.model import EventCountRule, EventRule
from rules.state import EventCountState, EventState
from rules.transition import Reason, Transition
from rules.windows import count_drops_below_at, insert_time, trim_before


def _event_of(message: DeviceMessage) -> str | None:
    event = getattr(message, "event", None)
    return event if isinstance(event, str) else None


class EventEvaluator(Evaluator[EventRule, EventState]):
    """Compiled ``type: event``."""

    state_type = EventState
    reads = (Channel.EVENT,)

    def __init__(self, rule: EventRule) -> None:
        super().__init__(rule)
        self.events = frozenset(rule.events)
        self.match = self.events
        self.clear_after = rule.clear_after
        self.needs_deadline = rule.clear_after is not None or self.flap is not None
        # per: segment — device id → the device its segment's condition is held under (the
        # first along the way); set by ``bind``, read by the engine to pick the state.
        self.keys: dict[str, str] | None = None

    def bind(self, registry: Registry) -> None:
        if self.spec.per != "segment":
            return
        by_segment: dict[str, list[tuple[float, str]]] = {}
        for device in registry.devices.values():
            segment = getattr(device, "segment", None)
            if segment is None or not self.spec.applies_to(device.kind, device.id):
                continue
            km = getattr(device, "km", None)
            by_segment.setdefault(segment, []).append((km if km is not None else 0.0, device.id))
        self.keys = {}
        for placed in by_segment.values():
            lead = min(placed)[1]
            for _, device_id in placed:
                self.keys[device_id] = lead

    def observe(
        self,
        st: EventState,
        device: AnyDevice,
        channel: Channel,
        message: DeviceMessage,
        ts: int,
        newest: int,
    ) -> list[Transition]:
        event = _event_of(message)
        if event not in self.match:
            return []
        out = self.form_expire(st, device, ts)
        life = st.life
        if life.cleared_ts is not None and ts <= life.cleared_ts:
            return out
        if not life.active and self.clear_after is not None and ts + self.clear_after <= newest:
            return out
        st.last_match = ts if st.last_match is None else max(ts, st.last_match)
        if self.keys is None:
            detail = f"{event} event" if not life.open else f"{event} event again"
            out.append(self.activate(life, device.id, ts, event, detail, Reason.EVENT))
            return out
        if not life.open:
            st.reporters = []
        if device.id not in st.reporters:
            st.reporters.append(device.id)
        key = self.keys.get(device.id, device.id)
        detail = f"{event} event on segment {getattr(device, 'segment', None)}, reported by " + (
            ", ".join(st.reporters)
        )
        out.append(self.activate(life, key, ts, event, detail, Reason.EVENT))
        return out

    def form_deadline(self, st: EventState, device: AnyDevice) -> int | None:
        if self.clear_after is None or not st.life.active or st.last_match is None:
            return None
        return st.last_match + self.clear_after

    def form_expire(self, st: EventState, device: AnyDevice, now: int) -> list[Transition]:
        due = self.form_deadline(st, device)
        if due is None or now < due:
            return []
        quiet = format_duration(self.clear_after or 0)
        names = ", ".join(sorted(self.match))
        key = device.id if self.keys is None else self.keys.get(device.id, device.id)
        cleared = self.deactivate(
            st.life, key, due, None, f"no {names} event for {quiet}", Reason.EXPIRED
        )
        return [cleared] if cleared is not None else []


class EventCountEvaluator(Evaluator[EventCountRule, EventCountState]):
    """Compiled ``type: event_count``."""

    state_type = EventCountState
    reads = (Channel.EVENT,)

    def __init__(self, rule: EventCountRule) -> None:
        super().__init__(rule)
        self.needs_deadline = True
        self.events = frozenset(rule.events)
        self.match = self.events
        self.count = rule.count
        self.window = rule.window
        self.cap = 2 * rule.count + 16  # only the newest `count` decide; the rest is for display
        self.names = ", ".join(sorted(self.match))
        self.window_text = format_duration(rule.window)

    def observe(
        self,
        st: EventCountState,
        device: AnyDevice,
        channel: Channel,
        message: DeviceMessage,
        ts: int,
        newest: int,
    ) -> list[Transition]:
        event = _event_of(message)
        if event not in self.match:
            return []
        out = self.form_expire(st, device, ts)
        life = st.life
        if life.cleared_ts is not None and ts <= life.cleared_ts:
            return out
        times = st.times
        # The window ends at the device's newest time, as for ``event``: a burst sent late
        # (an hour-old backlog) cannot open what would already have cleared.
        end = max(ts, newest, times[-1]) if times else max(ts, newest)
        if ts <= end - self.window or (
            ts in times and (message.seq is None or message.ts is None or message.ts == ts)
        ):
            # Outside the window, or the same event at the same millisecond again: a copy
            # (redelivered without a seq). Not when a stamp ahead was judged at another time
            # than sent (rules.engine._judged_ahead): with a seq, the engine has already told
            # copies on the stamp as sent, and events sent apart may be judged at one time.
            return out
        insert_time(times, ts)
        trim_before(times, end, self.window)
        if len(times) > self.cap:
            del times[: len(times) - self.cap]
        n = len(times)
        if n >= self.count:
            detail = f"{n} {self.names} events within {self.window_text}"
            out.append(self.activate(life, device.id, end, float(n), detail, Reason.EVENT_COUNT))
        return out

    def form_deadline(self, st: EventCountState, device: AnyDevice) -> int | None:
        if not st.life.active:
            return None
        if len(st.times) < self.count:
            # Fewer than count while active: the count was raised, or the state adopted with no
            # events (a restart after a rule change): it has dropped below already.
            return st.times[-1] if st.times else 0
        return count_drops_below_at(st.times, self.count, self.window)

    def form_expire(self, st: EventCountState, device: AnyDevice, now: int) -> list[Transition]:
        due = self.form_deadline(st, device)
        if due is None or now < due:
            return []
        trim_before(st.times, due, self.window)
        detail = (
            f"fewer than {self.count} {self.names} events within {self.window_text} "
            f"({len(st.times)} left)"
        )
        cleared = self.deactivate(
            st.life, device.id, due, float(len(st.times)), detail, Reason.BELOW_COUNT
        )
        return [cleared] if cleared is not None else []
