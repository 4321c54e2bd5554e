"""What every rule form's evaluator shares: routing, the open/update/clear lifecycle, flaps.

An evaluator is the compiled form of one rule: it knows which (kind, channel) pairs it reads and
what it reads from them, and turns a message (or the passing of time) plus its plain-data state
into transitions. It never keeps state of its own between calls: everything is in the state
object the engine hands it, so a snapshot of those is a snapshot of the engine.

Lifecycle: ``activate`` opens the condition, or updates it when it is already open (repeats do
not open twice); ``deactivate`` clears it, unless the rule's flap settings say it opened and
cleared too often within the flap window, in which case it stays open and says "flapping";
``settle`` closes a flapping condition once it has stayed clear long enough for the flap window
to hold no more than ``max_transitions`` changes.
"""

from __future__ import annotations

import bisect
from abc import ABC, abstractmethod
from typing import Any, ClassVar, Generic, TypeVar

from devices.kinds import Channel, Kind
from devices.payloads import DeviceMessage
from devices.registry import GateDevice, Registry, RiverDevice, RoadDevice
from rules.durations import format_duration
from rules.model import AnyRule, RuleBase
from rules.state import (
    AlongState,
    EventCountState,
    EventState,
    FormState,
    Lifecycle,
    QualityState,
    RateState,
    S,
    SilenceState,
    ThresholdState,
    decode,
    encode,
)
from rules.transition import Action, Reason, Transition

AnyDevice = GateDevice | RiverDevice | RoadDevice
Value = float | str | None
R = TypeVar("R", bound=RuleBase)


class Evaluator(ABC, Generic[R, S]):
    """The compiled form of one rule: ``R`` the rule form it compiles, ``S`` its state."""

    state_type: ClassVar[type[Any]]
    # The channels a form reads, for each of the rule's kinds (a threshold sets its own).
    reads: tuple[Channel, ...] = ()

    def __init__(self, rule: R) -> None:
        self.spec: R = rule
        self.rule: AnyRule = rule  # type: ignore[assignment]  # every R is one of AnyRule
        self.rule_id = rule.id
        self.only = frozenset(rule.devices) if rule.devices is not None else None
        self.flap = rule.flap
        self.events: frozenset[str] | None = None  # event rules: the only events they read
        # Whether time alone can change the condition (a form's timeout, or flap settling);
        # forms with timeouts set it too.
        self.needs_deadline = self.flap is not None

    # -- what the engine calls ------------------------------------------------------------

    def routes(self) -> list[tuple[Kind, Channel]]:
        """The (kind, channel) pairs whose messages this rule reads."""
        return [(kind, channel) for kind in self.spec.kinds for channel in self.reads]

    def bind(self, registry: Registry) -> None:
        """Learn what the form needs of the registry, once (the engine's registry is fixed)."""

    def kinds(self) -> set[Kind]:
        """The device kinds whose conditions this rule holds."""
        return {kind for kind, _ in self.routes()}

    def new_state(self) -> S:
        """Fresh state for a device the rule has not seen."""
        state: S = self.state_type()
        return state

    @abstractmethod
    def observe(
        self,
        st: S,
        device: AnyDevice,
        channel: Channel,
        message: DeviceMessage,
        ts: int,
        newest: int,
    ) -> list[Transition]:
        """Transitions caused by one (new, not duplicate) message at device time ``ts``.

        ``newest`` is the device's newest time so far, this message included.
        """

    def form_deadline(self, st: S, device: AnyDevice) -> int | None:
        """When time alone would change this form's condition, or None."""
        return None

    def form_expire(self, st: S, device: AnyDevice, now: int) -> list[Transition]:
        """Transitions due by ``now`` from the passing of time alone."""
        return []

    def deadline(self, st: S, device: AnyDevice) -> int | None:
        """The earliest time ``expire`` has something to do."""
        form = self.form_deadline(st, device)
        life = st.life
        # settle_at is None unless flapping; checked here as this runs after every message.
        settle = self.settle_at(life) if life.flapping else None
        if form is None:
            return settle
        return form if settle is None else min(form, settle)

    def expire(self, st: S, device: AnyDevice, now: int) -> list[Transition]:
        """Everything due by ``now``: the form's own timeouts, then flap settling."""
        out = self.form_expire(st, device, now)
        settled = self.settle(st.life, device.id, now)
        if settled is not None:
            out.append(settled)
        return out

    def encode(self, st: S) -> dict[str, Any]:
        """The state as plain data."""
        return encode(st)

    def decode(self, data: Any) -> S:
        """State from plain data."""
        state: S = decode(self.state_type, data)
        return state

    # -- lifecycle ------------------------------------------------------------------------

    def emit(
        self, device_id: str, action: Action, ts: int, value: Value, detail: str, reason: Reason
    ) -> Transition:
        """A transition of this rule."""
        return Transition(self.rule_id, device_id, action, ts, value, detail, reason)

    def _flip(self, life: Lifecycle, ts: int) -> None:
        if self.flap is None:
            return
        bisect.insort(life.flips, ts)
        # count > max_transitions needs at most max_transitions + 1 of the newest.
        keep = self.flap.max_transitions + 1
        if len(life.flips) > keep:
            del life.flips[: len(life.flips) - keep]

    def activate(
        self, life: Lifecycle, device_id: str, ts: int, value: Value, detail: str, reason: Reason
    ) -> Transition:
        """The condition holds: open it, or update it if it is open already."""
        if not life.active:
            life.active = True
            self._flip(life, ts)
        if not life.open:
            life.open = True
            life.opened_ts = ts
            life.repeats = 0
            life.flapping = False
            return self.emit(device_id, "open", ts, value, detail, reason)
        life.repeats += 1
        return self.emit(device_id, "update", _after(ts, life), value, detail, reason)

    def deactivate(
        self, life: Lifecycle, device_id: str, ts: int, value: Value, detail: str, reason: Reason
    ) -> Transition | None:
        """The condition no longer holds: clear it, or hold it open if it is flapping."""
        if not life.active:
            return None
        life.active = False
        self._flip(life, ts)
        if not life.open:  # resolved by hand while it held: nothing to clear
            return None
        if self.flap is not None:
            recent = sum(1 for t in life.flips if t > ts - self.flap.window)
            if recent > self.flap.max_transitions:
                life.flapping = True
                window = format_duration(self.flap.window)
                return self.emit(
                    device_id,
                    "update",
                    _after(ts, life),
                    value,
                    f"flapping ({recent} opens and clears within {window}), held open: {detail}",
                    Reason.FLAPPING,
                )
        return self._close(life, device_id, ts, value, detail, reason)

    def _close(
        self, life: Lifecycle, device_id: str, ts: int, value: Value, detail: str, reason: Reason
    ) -> Transition:
        ts = _after(ts, life)
        life.open = False
        life.flapping = False
        life.cleared_ts = ts if life.cleared_ts is None else max(ts, life.cleared_ts)
        return self.emit(device_id, "clear", ts, value, detail, reason)

    def settle_at(self, life: Lifecycle) -> int | None:
        """When a flapping, currently clear condition may close, or None."""
        if self.flap is None or not (life.open and life.flapping and not life.active):
            return None
        m = self.flap.max_transitions
        if len(life.flips) <= m:
            return life.flips[-1] if life.flips else 0
        return life.flips[-(m + 1)] + self.flap.window

    def settle(self, life: Lifecycle, device_id: str, now: int) -> Transition | None:
        """Close a flapping condition that has stayed clear long enough."""
        at = self.settle_at(life)
        if at is None or now < at:
            return None
        ts = max(at, life.flips[-1]) if life.flips else at
        window = format_duration(self.flap.window if self.flap else 0)
        return self._close(
            life, device_id, ts, None, f"stopped flapping: clear through {window}", Reason.SETTLED
        )


def _after(ts: int, life: Lifecycle) -> int:
    """An update or clear is never stamped before the open it belongs to (late messages)."""
    return ts if life.opened_ts is None or ts >= life.opened_ts else life.opened_ts


def forget(st: FormState, cleared: int | None, now: int) -> None:
    """A person resolved the alert: forget the condition, so that the next reading (or event)
    that shows it opens a new alert.

    ``cleared`` is the device time of the resolve (messages no newer belong to the resolved
    episode: a late, redelivered or backlogged event cannot reopen it); ``now`` the caller's
    clock (``tick``'s). A
    silent device is given a fresh ``k`` × interval from ``now`` before it counts as silent again,
    not reopened on the next tick. Flap history is kept: a condition that goes on flapping is
    held again.
    """
    life = st.life
    life.open = life.active = life.flapping = False
    if cleared is not None:
        life.cleared_ts = cleared if life.cleared_ts is None else max(cleared, life.cleared_ts)
    if isinstance(st, ThresholdState):
        st.pending_since = st.clear_since = None
        st.above = False
    elif isinstance(st, RateState):
        st.above = False
    elif isinstance(st, QualityState):
        st.worst = None
    elif isinstance(st, AlongState):
        st.sources.clear()  # an upstream condition opening later is a new episode
    elif isinstance(st, EventState):
        st.reporters.clear()
    elif isinstance(st, EventCountState):
        # The events counted so far belong to the resolved alert: a burst must be counted anew.
        st.times = [t for t in st.times if life.cleared_ts is not None and t > life.cleared_ts]
    elif isinstance(st, SilenceState):
        st.cause, st.quiet = None, []
        st.heard_at = now if st.heard_at is None else max(now, st.heard_at)


def adopt(st: FormState, opened_ts: int) -> None:
    """An alert the store holds open and this state does not (a snapshot lost or of another
    form): hold the condition open, so the next reading decides (clears it or repeats)."""
    life = st.life
    life.open = life.active = True
    life.opened_ts = opened_ts if life.opened_ts is None else life.opened_ts
    if isinstance(st, EventState) and st.last_match is None:
        st.last_match = opened_ts  # so clear_after counts from the open


def compare(x: float, op: str, ref: float) -> bool:
    """``x op ref`` for the four comparison operators a rule may use."""
    if op == ">":
        return x > ref
    if op == ">=":
        return x >= ref
    if op == "<":
        return x < ref
    return x <= ref


def number(message: DeviceMessage, field: str) -> float | None:
    """A numeric field of a message, or None if absent (bools are not numbers)."""
    value = getattr(message, field, None)
    if type(value) is float:  # the usual case first: one check instead of three
        return value
    if value is None or isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)
