"""The rule engine: validated messages and the passing of time in, transitions out.

Pure: no I/O, no asyncio, no clock. The caller feeds each valid message with its device time
(``observe``) and, every second or so, its own notion of now (``tick``) for the rules that fire
on the absence of messages (silence, ``clear_after``, sliding windows, flap settling).

Cheap per message: rules are compiled once into evaluators and indexed by (kind, channel), so a
message meets only the rules that read its kind and channel, each knowing which fields it reads.
Time-driven work sits in a heap of deadlines, so ``tick`` touches only what is due.

Duplicates: a message whose (``seq``, ``ts``) the device already sent is a redelivery and is
dropped before any rule sees it, however many came since (``rules.seen`` keeps them as runs, so
a whole in-flight window of 20,000 redelivered messages is recognised). Both are compared
because a device that restarts counts ``seq`` from 1 again; messages without ``seq`` cannot be
recognised and are evaluated.

State: everything per (rule, device) and per device is plain data (``rules.state``);
``snapshot()`` returns it as JSON-ready data and ``Engine.restore`` continues from it exactly.
Every part of it is bounded whatever the message rate (recent seqs, rate points, event times and
flap times are capped; states are at most one per rule and registered device), so a snapshot
does not grow with the message rate: well under a millisecond for the example city (60 devices)
at 2,000 msg/s as at a reading a minute, taken on the ingest service's event loop.

Why one module (over 400 lines): ``observe``, ``tick``, ``resolve``, ``adopt``, ``snapshot`` and
``restore`` all work on the same indexes (rules by kind and channel, the deadline heap, the
per-(rule, device) states); each rule form's own logic is already in its evaluator module.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable
from typing import Any

from devices.kinds import Channel, Kind
from devices.payloads import DeviceMessage
from devices.registry import Registry
from rules.alongriver import AlongRiverEvaluator
from rules.evaluator import AnyDevice, Evaluator, adopt, forget
from rules.events import EventCountEvaluator, EventEvaluator
from rules.model import (
    AlongRiverRule,
    AnyRule,
    EventCountRule,
    EventRule,
    RateOfChangeRule,
    SilenceRule,
    ThresholdRule,
    WaterQualityRule,
)
from rules.quality import QualityEvaluator
from rules.rate import RateEvaluator
from rules.schema import event_names
from rules.seen import is_repeat, remember
from rules.silence import SilenceEvaluator
from rules.state import (
    SNAPSHOT_FORMAT,
    DeviceState,
    SilenceState,
    SnapshotError,
    decode_device,
    encode,
)
from rules.threshold import ThresholdEvaluator
from rules.transition import Reason, Transition

Route = tuple[Kind, Channel, str | None]
# A rule as Engine.observe meets it: (index, evaluator, only, states, dues, observe, timed,
# keys): keys maps a device to the device its condition is held under (per: segment), or None.
_Observer = tuple[
    int,
    Evaluator[Any, Any],
    frozenset[str] | None,
    dict[str, Any],
    dict[str, int],
    Callable[..., list[Transition]],
    bool,
    dict[str, str] | None,
]
_EVENT = Channel.EVENT  # bound once: an enum member lookup costs ~0.1 µs (Engine.observe)


def _judged_ahead(dev: DeviceState, sent: int, not_after: int, skew: int | None) -> int:
    """The device time a message stamped ``sent`` past ``not_after`` (its arrival plus the
    tolerance: a fast clock) is judged at: the stamp less the clock's measured lead, never
    past ``not_after`` — so a burst read in one go keeps its spacing rather than collapsing
    onto one millisecond (event_count took them for copies of one event).

    A stamp the device sent no later than an earlier stamp ahead is judged no later than that
    one was, less their difference: a redelivery, read later (so ``not_after`` is later), with
    the skew measured anew in between, is judged no later than the first time, and so is no
    newer than a person's resolve of what the first delivery opened.
    """
    judged = sent - skew if skew is not None and skew > 0 else sent
    if judged > not_after:
        judged = not_after
    last_sent, last_judged = dev.ahead_sent, dev.ahead_judged
    if last_sent is None or last_judged is None or sent > last_sent:
        dev.ahead_sent, dev.ahead_judged = sent, judged
    elif judged > last_judged - (last_sent - sent):
        judged = last_judged - (last_sent - sent)
    return judged


def compile_rule(rule: AnyRule) -> Evaluator[Any, Any]:
    """The evaluator for one rule."""
    if isinstance(rule, ThresholdRule):
        return ThresholdEvaluator(rule)
    if isinstance(rule, RateOfChangeRule):
        return RateEvaluator(rule)
    if isinstance(rule, EventRule):
        return EventEvaluator(rule)
    if isinstance(rule, EventCountRule):
        return EventCountEvaluator(rule)
    if isinstance(rule, WaterQualityRule):
        return QualityEvaluator(rule)
    if isinstance(rule, SilenceRule):
        return SilenceEvaluator(rule)
    if isinstance(rule, AlongRiverRule):
        return AlongRiverEvaluator(rule)
    raise TypeError(f"not a rule: {rule!r}")


class Engine:
    """Evaluates rules over devices' messages on device time; see the module docstring."""

    def __init__(self, rules: Iterable[AnyRule], registry: Registry) -> None:
        self.rules: tuple[AnyRule, ...] = tuple(rules)
        self.registry = registry
        self._evaluators: list[Evaluator[Any, Any]] = [compile_rule(r) for r in self.rules]
        self._by_id = {ev.rule_id: i for i, ev in enumerate(self._evaluators)}
        if len(self._by_id) != len(self._evaluators):
            raise ValueError("rule ids must be unique")
        for ev in self._evaluators:
            ev.bind(registry)
        # Rules that follow other rules' transitions (along_river): trigger id → their indexes.
        self._following: dict[str, list[int]] = {}
        for i, ev in enumerate(self._evaluators):
            if isinstance(ev, AlongRiverEvaluator):
                for trigger in sorted(ev.after):
                    self._following.setdefault(trigger, []).append(i)
        # (kind, channel, event name or None) → the rules that read it, in rule order. Event
        # rules are filed under their event names only, so a "pass" never meets "forced_open".
        index: dict[Route, list[tuple[int, Evaluator[Any, Any]]]] = {}
        for i, ev in enumerate(self._evaluators):
            for kind, channel in dict.fromkeys(ev.routes()):
                if channel is not Channel.EVENT:
                    index.setdefault((kind, channel, None), []).append((i, ev))
                    continue
                for event in sorted(event_names(kind) or ()):
                    if ev.events is None or event in ev.events:
                        index.setdefault((kind, channel, event), []).append((i, ev))
        self._index = {route: tuple(evs) for route, evs in index.items()}
        self._states: list[dict[str, Any]] = [{} for _ in self._evaluators]
        self._devices: dict[str, DeviceState] = {}
        self._heap: list[tuple[int, int, str]] = []
        # Per rule (by index): device id → the deadline its heap entry is for. One dict per
        # rule, so the per-message check needs no (rule, device) key tuple.
        self._due: list[dict[str, int]] = [{} for _ in self._evaluators]
        # The same routes as _index, each rule with what observe needs of it bound once (the
        # rules and their evaluators are fixed for the engine's life), to save per-message
        # attribute lookups: (index, evaluator, only, states, dues, bound observe, timed).
        self._observers: dict[Route, tuple[_Observer, ...]] = {
            route: tuple(
                (
                    i,
                    ev,
                    ev.only,
                    self._states[i],
                    self._due[i],
                    ev.observe,
                    ev.needs_deadline,
                    getattr(ev, "keys", None),
                )
                for i, ev in evs
            )
            for route, evs in self._index.items()
        }
        self._silences = [ev for ev in self._evaluators if isinstance(ev, SilenceEvaluator)]
        # The caller's own state to restore with the engine's (ingest keeps its read clock
        # here, ingest/alerts/readclock.py): opaque JSON-ready data, saved in every snapshot.
        self.caller_state: dict[str, Any] | None = None
        self._armed: set[str] = set()  # silence rules whose unseen devices are being watched
        # A rule that raises loses only its own verdict on that message or tick: counted per
        # rule id, and told to ``on_failure`` (ingest logs it); the other rules go on.
        self.failures: dict[str, int] = {}
        self.on_failure: Callable[[str, str, Exception], None] | None = None
        # Transitions found while restoring (a rule changed under a held condition), given
        # out by the first ``tick``.
        self._restored: list[Transition] = []
        # (rule id, device id) whose restored open condition the rule no longer watches
        # (its kinds or devices changed): the caller resolves their alerts (``rule_changed``).
        self.dropped_open: list[tuple[str, str]] = []
        self.restore_problems: list[str] = []  # what a restore could not read (and dropped)
        self._armable = sum(
            1
            for ev in self._evaluators
            if isinstance(ev, SilenceEvaluator) and ev.spec.watch_unseen
        )

    # -- messages -------------------------------------------------------------------------

    def observe(
        self,
        device: AnyDevice,
        channel: Channel,
        message: DeviceMessage,
        ts_ms: int,
        arrival_ms: int | None = None,
        not_after_ms: int | None = None,
        skew_ms: int | None = None,
    ) -> list[Transition]:
        """Evaluate one valid message from ``device`` at device time ``ts_ms``.

        ``arrival_ms``: when it was read, on the clock later passed to ``tick`` (silence is
        then judged on arrival; without it, on device time). ``not_after_ms``: the latest
        device time the message can truly be from (when it was received): a stamp past it is
        a clock running ahead, and is judged no later than ``not_after_ms``, so that one reading
        stamped minutes ahead does not hide the readings after it (each rule ignores readings
        older than its newest). ``skew_ms``: the device clock's measured lead, if it runs
        fast: a stamp past ``not_after_ms`` is judged at the stamp less it (still never past
        ``not_after_ms``), so a burst read at once keeps its spacing (``_judged_ahead``).
        Duplicates are still recognised by the stamp as sent.
        """
        for silence in self._silences:
            silence.arrival_ms = arrival_ms
        device_id = device.id
        dev = self._devices.get(device_id)
        if dev is None:
            dev = self._devices[device_id] = DeviceState()
        seq = message.seq
        newest = dev.newest_ts
        if seq is not None:
            # The duplicate check (rules.seen), its common case inline as it runs on every
            # message: the next seq of the device's only run, after its end, is new. On the
            # stamps as sent (not newest_ts, which is judged: a stamp ahead is cut back).
            runs = dev.seen
            last = runs[-1] if runs else None
            if last is not None and seq == last[1] + 1 and ts_ms > last[3] and len(runs) == 1:
                runs[-1] = (last[0], seq, last[2], ts_ms)
            elif is_repeat(runs, seq, ts_ms):
                return []
            elif last is not None and seq == last[1] + 1 and ts_ms > last[3]:
                runs[-1] = (last[0], seq, last[2], ts_ms)
            else:
                remember(runs, seq, ts_ms)
        if not_after_ms is not None and ts_ms > not_after_ms:
            ts_ms = _judged_ahead(dev, ts_ms, not_after_ms, skew_ms)
        if newest is None or ts_ms > newest:
            newest = dev.newest_ts = ts_ms
        # _EVENT, not Channel.EVENT: an enum member lookup costs ~0.1 µs each time.
        event = getattr(message, "event", None) if channel is _EVENT else None
        observers = self._observers.get((device.kind, channel, event))
        if not observers:
            return []
        out: list[Transition] = []
        for i, ev, only, states, dues, observe, timed, keys in observers:
            if only is not None and device_id not in only:
                continue
            key = device_id if keys is None else keys.get(device_id, device_id)
            st = states.get(key)
            if st is None:
                st = states[key] = ev.new_state()
            try:  # free unless it raises (3.11): one rule's bug costs only its own verdict
                found = observe(st, device, channel, message, ts_ms, newest)
                if found:
                    out += found
                if timed:
                    # _schedule, inlined: most messages leave the earlier heap entry as it is.
                    due = ev.deadline(st, device)
                    if due is not None:
                        current = dues.get(key)
                        if current is None or due < current:
                            dues[key] = due
                            heapq.heappush(self._heap, (due, i, key))
            except Exception as e:
                self._failed(ev.rule_id, device_id, e)
        if out and self._following:
            out += self._follow(out)
        return out

    def _follow(self, found: list[Transition]) -> list[Transition]:
        """What the rules that follow others (along_river) make of these transitions."""
        out: list[Transition] = []
        for t in found:
            for i in self._following.get(t.rule_id, ()):
                ev = self._evaluators[i]
                if not isinstance(ev, AlongRiverEvaluator):
                    continue
                try:
                    for device_id, made in ev.follow(self._states[i], t):
                        if made is not None:
                            out.append(made)
                        self._reschedule(i, device_id)
                except Exception as e:
                    self._failed(ev.rule_id, t.device_id, e)
        return out

    def _reschedule(self, i: int, device_id: str) -> None:
        device = self.registry.devices.get(device_id)
        st = self._states[i].get(device_id)
        if device is not None and st is not None:
            self._schedule(i, self._evaluators[i], st, device)

    def _failed(self, rule_id: str, device_id: str, error: Exception) -> None:
        self.failures[rule_id] = self.failures.get(rule_id, 0) + 1
        if self.on_failure is not None:
            self.on_failure(rule_id, device_id, error)

    # -- time -----------------------------------------------------------------------------

    def tick(self, now_ms: int) -> list[Transition]:
        """Everything due by ``now_ms`` (the caller's clock): silence, clear_after, windows."""
        if len(self._armed) < self._armable:
            self._arm_unseen(now_ms)
        out: list[Transition] = self._restored
        self._restored = []
        heap = self._heap
        while heap and heap[0][0] <= now_ms:
            when, i, device_id = heapq.heappop(heap)
            dues = self._due[i]
            if dues.get(device_id) != when:
                continue  # superseded by an earlier deadline
            del dues[device_id]
            device = self.registry.devices.get(device_id)
            st = self._states[i].get(device_id)
            if device is None or st is None:
                continue
            ev = self._evaluators[i]
            try:
                due = ev.deadline(st, device)
                if due is not None and due <= now_ms:
                    out.extend(ev.expire(st, device, now_ms))
                self._schedule(i, ev, st, device)
            except Exception as e:
                self._failed(ev.rule_id, device_id, e)
        if out and self._following:
            out += self._follow(out)
        # Heap order depends on when entries were pushed (a restart rebuilds the heap); device
        # time is the order that means something, and makes a restart change nothing.
        out.sort(key=lambda t: (t.ts_ms, t.rule_id, t.device_id))
        return out

    def _schedule(self, i: int, ev: Evaluator[Any, Any], st: Any, device: AnyDevice) -> None:
        due = ev.deadline(st, device)
        if due is None:
            return
        dues = self._due[i]
        current = dues.get(device.id)
        # Deadlines mostly move later (silence, on every message): keep the earlier heap entry
        # and re-check when it comes up rather than pushing one entry per message.
        if current is None or due < current:
            dues[device.id] = due
            heapq.heappush(self._heap, (due, i, device.id))

    def _arm_unseen(self, now_ms: int) -> None:
        for i, ev in enumerate(self._evaluators):
            if not isinstance(ev, SilenceEvaluator) or not ev.spec.watch_unseen:
                continue
            if ev.rule_id in self._armed:
                continue
            self._armed.add(ev.rule_id)
            states = self._states[i]
            for device in self.registry.devices.values():
                if device.id in states or not ev.spec.applies_to(device.kind, device.id):
                    continue
                states[device.id] = SilenceState(last_seen=now_ms, heard=False)
                self._schedule(i, ev, states[device.id], device)

    # -- people ---------------------------------------------------------------------------

    def resolve(
        self,
        rule_id: str,
        device_id: str,
        now_ms: int,
        opened_ts: int | None = None,
        resolved_ts: int | None = None,
    ) -> bool:
        """A person resolved the alert: forget the condition, so the next reading or event
        that shows it opens a new alert (``rules.evaluator.forget``). Return if it was open.

        ``opened_ts``: the resolved alert's opening time; a condition opened later is another
        episode (it opened after the resolve) and is left alone. ``resolved_ts``: when it was
        resolved, in the device's time as the engine judges it: what the device sent before is
        the resolved episode's, however late it is read (a backlog after a restart); without
        it, the device's newest time read so far. ``now_ms``: ``tick``'s clock.
        """
        i = self._by_id.get(rule_id)
        st = self._states[i].get(device_id) if i is not None else None
        if st is None or not st.life.open:
            return False
        opened = st.life.opened_ts
        if opened_ts is not None and opened is not None and opened > opened_ts:
            return False
        if resolved_ts is None:
            dev = self._devices.get(device_id)
            resolved_ts = dev.newest_ts if dev else None
        forget(st, resolved_ts, now_ms)
        device = self.registry.devices.get(device_id)
        if device is not None and i is not None and self._evaluators[i].needs_deadline:
            self._schedule(i, self._evaluators[i], st, device)
        # What follows it downstream counts it cleared when resolved (else it held for ever).
        for j in self._following.get(rule_id, ()):
            follower = self._evaluators[j]
            if isinstance(follower, AlongRiverEvaluator):
                gone_at = resolved_ts if resolved_ts is not None else now_ms
                for below in follower.source_gone(self._states[j], rule_id, device_id, gone_at):
                    self._reschedule(j, below)
        return True

    def adopt(self, rule_id: str, device_id: str, opened_ts: int) -> bool:
        """Hold open a condition the alert store has open and the engine does not (its state
        was lost or dropped): the next reading decides. False if the rule does not watch it."""
        i = self._by_id.get(rule_id)
        device = self.registry.devices.get(device_id)
        if i is None or device is None or not self.watches(rule_id, device):
            return False
        ev = self._evaluators[i]
        st = self._states[i].get(device_id)
        if st is None:
            st = self._states[i][device_id] = ev.new_state()
        if st.life.open:
            return True
        adopt(st, opened_ts)
        if ev.needs_deadline:
            self._schedule(i, ev, st, device)
        return True

    def hold(self, rule_id: str, device_id: str, opened_ts: int) -> None:
        """The store opened an alert for this (rule, device) at ``opened_ts`` from a repeat
        (a person had resolved the one before): hold it — an open condition takes it as its
        opening (an older resolve is then of another episode), a forgotten one is adopted."""
        i = self._by_id.get(rule_id)
        st = self._states[i].get(device_id) if i is not None else None
        if st is not None and st.life.open:
            st.life.opened_ts = opened_ts
        else:
            self.adopt(rule_id, device_id, opened_ts)

    def watches(self, rule_id: str, device: AnyDevice) -> bool:
        """Whether the rule reads this device's messages (its kinds and devices)."""
        i = self._by_id.get(rule_id)
        if i is None:
            return False
        ev = self._evaluators[i]
        keys = getattr(ev, "keys", None)
        if keys is not None and keys.get(device.id, device.id) != device.id:
            # per: segment holds the segment's condition under its lead device only: one held
            # under another camera (a per-device alert from before) is the caller's to resolve.
            return False
        return device.kind in ev.kinds() and (ev.only is None or device.id in ev.only)

    def is_open(self, rule_id: str, device_id: str) -> bool:
        """Whether the engine holds an open condition for (rule, device)."""
        i = self._by_id.get(rule_id)
        st = self._states[i].get(device_id) if i is not None else None
        return bool(st is not None and st.life.open)

    def open_conditions(self) -> list[tuple[str, str]]:
        """Every open (rule id, device id), for reconciling with the alert store."""
        return [
            (ev.rule_id, device_id)
            for i, ev in enumerate(self._evaluators)
            for device_id, st in self._states[i].items()
            if st.life.open
        ]

    # -- restart --------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """All state as JSON-ready plain data; see ``restore``.

        A copy: later messages and ticks do not change it, so it may be serialised elsewhere
        (a worker thread) while the engine goes on. Cheap (no deep copy: ``rules.state.encode``),
        and the same size at any message rate, as all state is bounded.

        Shape::

            {"format": 1,
             "devices": {device_id: {"newest_ts": int | None,
                                     "seen": [[first seq, last seq, first ts, last ts], ...],
                                     "ahead_sent": int | None, "ahead_judged": int | None}},
             "rules": {rule_id: {"type": form, "states": {device_id: {...form state...}}}},
             "armed": [rule_id, ...],
             "caller": {...} | None}  # the caller's own state (caller_state)

        A form state is its ``rules.state`` dataclass as a dict, with ``life`` the Lifecycle.
        """
        return {
            "format": SNAPSHOT_FORMAT,
            "devices": {device_id: encode(dev) for device_id, dev in self._devices.items()},
            "rules": {
                ev.rule_id: {
                    "type": ev.rule.type,
                    "states": {d: ev.encode(st) for d, st in self._states[i].items()},
                }
                for i, ev in enumerate(self._evaluators)
                if self._states[i]
            },
            "armed": sorted(self._armed),
            "caller": self.caller_state,
        }

    @classmethod
    def restore(cls, rules: Iterable[AnyRule], registry: Registry, snapshot: Any) -> Engine:
        """An engine that continues from ``snapshot``, re-judged against the current rules.

        Kept: state for rules whose id and form are unchanged and for devices the rule still
        watches. Dropped: the rest; an open condition of a rule that no longer watches the
        device is listed in ``dropped_open`` (the caller resolves its alert, ``rule_changed``).
        Re-judged: a condition held open by flap suppression of a rule that has no ``flap:``
        any more closes on the first ``tick`` (or, if it holds, stays open as an ordinary one);
        other changed settings apply from the next message or deadline.

        Lenient on purpose (a rollback must not stop ingest): a snapshot of a newer format is
        read for what this version knows, unknown fields are ignored, and a state that cannot
        be read is dropped and named in ``restore_problems``. Raise SnapshotError only when
        the whole snapshot is unreadable; the caller then starts afresh.
        """
        engine = cls(rules, registry)
        if not isinstance(snapshot, dict):
            raise SnapshotError(f"not an engine snapshot: {type(snapshot).__name__}")
        version = snapshot.get("format")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise SnapshotError(f"not an engine snapshot format: {version!r}")
        devices = snapshot.get("devices", {})
        rules_data = snapshot.get("rules", {})
        if not isinstance(devices, dict) or not isinstance(rules_data, dict):
            raise SnapshotError("devices and rules must be mappings")
        if version > SNAPSHOT_FORMAT:
            engine.restore_problems.append(
                f"snapshot format {version} is newer than {SNAPSHOT_FORMAT}: read what is known"
            )
        caller = snapshot.get("caller")  # absent in snapshots before issue 13
        engine.caller_state = caller if isinstance(caller, dict) else None
        for device_id, data in devices.items():
            if device_id not in registry.devices:
                continue
            try:
                engine._devices[device_id] = decode_device(data)
            except SnapshotError as e:
                engine.restore_problems.append(f"device {device_id}: {e}")
        for rule_id, data in rules_data.items():
            engine._restore_rule(rule_id, data)
        engine._prune_followers()
        armed = snapshot.get("armed", [])
        if isinstance(armed, list):
            engine._armed = {a for a in armed if isinstance(a, str) and a in engine._by_id}
        return engine

    def _restore_rule(self, rule_id: str, data: Any) -> None:
        i = self._by_id.get(rule_id)
        if i is None or not isinstance(data, dict):
            self._drop_open(rule_id, data)
            return
        ev = self._evaluators[i]
        if data.get("type") != ev.rule.type:
            self._drop_open(rule_id, data)  # another form now: its alert is adopted afresh
            return
        states = data.get("states", {})
        if not isinstance(states, dict):
            self.restore_problems.append(f"rules.{rule_id}.states is not a mapping")
            return
        for device_id, raw in states.items():
            device = self.registry.devices.get(device_id)
            if device is None:
                continue
            try:
                st = ev.decode(raw)
            except SnapshotError as e:
                self.restore_problems.append(f"rules.{rule_id}.{device_id}: {e}")
                continue
            if not self.watches(rule_id, device):
                if st.life.open:
                    self.dropped_open.append((rule_id, device_id))
                continue
            if isinstance(ev, AlongRiverEvaluator):
                ev.prune(st, device_id)  # sources the rule no longer follows (after, within)
            if st.life.flapping and ev.flap is None:
                self._unflap(ev, st, device_id)
            self._states[i][device_id] = st
            if ev.needs_deadline:
                self._schedule(i, ev, st, device)

    def _prune_followers(self) -> None:
        """After a restore: an along_river source whose upstream rule no longer watches its
        station (gone, or its devices changed) would never clear: forget it."""
        for i, ev in enumerate(self._evaluators):
            if not isinstance(ev, AlongRiverEvaluator):
                continue
            for device_id, st in self._states[i].items():
                for key in list(st.sources):
                    rule_id, _, upstream = key.partition("/")
                    device = self.registry.devices.get(upstream)
                    if device is None or not self.watches(rule_id, device):
                        del st.sources[key]
                        self._reschedule(i, device_id)

    def _drop_open(self, rule_id: str, data: Any) -> None:
        """A rule gone (or of another form): its open conditions are the caller's to resolve
        when the rule is gone; a rule of another form adopts them (the caller's reconcile)."""
        if rule_id in self._by_id:
            return
        states = data.get("states", {}) if isinstance(data, dict) else {}
        for device_id, raw in states.items() if isinstance(states, dict) else ():
            life = raw.get("life") if isinstance(raw, dict) else None
            if isinstance(life, dict) and life.get("open") and device_id in self.registry.devices:
                self.dropped_open.append((rule_id, device_id))

    def _unflap(self, ev: Evaluator[Any, Any], st: Any, device_id: str) -> None:
        """Flap suppression was removed from the rule while it held this condition open."""
        life = st.life
        life.flapping = False
        if life.active:
            return  # the condition holds: an ordinary open condition now
        ts = max([*life.flips, life.opened_ts or 0])
        self._restored.append(
            ev._close(
                life, device_id, ts, None, "flap suppression removed from the rule", Reason.SETTLED
            )
        )
