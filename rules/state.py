"""Per-(rule, device) and per-device state: plain data only, so it survives a restart.

Every class here is a dataclass of ints, floats, strings, bools, None, lists and dicts with
string keys; ``encode`` turns one into JSON-ready data and ``decode`` rebuilds it. The engine's
snapshot is made of these and nothing else (no rule objects, no clocks, no closures).

``encode`` is written out per class rather than left to ``dataclasses.asdict``: the snapshot is
taken on the ingest service's event loop, and ``asdict`` deep-copies every int one by one
(``copy.deepcopy``), which made a snapshot of the example city at 2,000 msg/s cost 13-25 ms and
set off several garbage collections (each a pause of the whole loop), most of it for the
devices' then 64 remembered (seq, ts) pairs. ``encode`` copies each list and dict one
level down; the pairs and runs inside (``RateState.points``, ``DeviceState.seen``) are shared
with the snapshot, which is safe because nothing changes one in place: the engine only appends
new ones, replaces one with a new list or tuple, or drops them. A field added to a class must
be added to its encoder too (``tests/unit/test_rules_state.py`` compares each with ``asdict``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from rules.seen import Run, from_pairs

SNAPSHOT_FORMAT = 1


class SnapshotError(ValueError):
    """A snapshot this engine cannot restore (other format, or malformed)."""


@dataclass(slots=True)
class Lifecycle:
    """The condition of one rule on one device, shared by every form.

    ``active`` is whether the rule's condition holds now; ``open`` whether an alert is open for
    it. They differ while flap suppression holds a cleared condition open, and after a manual
    resolve while the condition still holds.
    """

    open: bool = False
    active: bool = False
    opened_ts: int | None = None
    cleared_ts: int | None = None  # the last clear (automatic or manual)
    repeats: int = 0  # updates since it opened
    flapping: bool = False
    flips: list[int] = field(default_factory=list)  # recent times `active` changed (flap only)


@dataclass(slots=True)
class ThresholdState:
    """Threshold: the newest reading's time and how long trigger/clear have held."""

    life: Lifecycle = field(default_factory=Lifecycle)
    last_ts: int | None = None
    pending_since: int | None = None  # first reading of the current run above the trigger
    clear_since: int | None = None  # first reading of the current run inside the clear range
    above: bool = False  # the newest reading met the trigger


@dataclass(slots=True)
class RateState:
    """Rate of change: the readings in the window as [ts_ms, value] pairs, oldest first."""

    life: Lifecycle = field(default_factory=Lifecycle)
    last_ts: int | None = None
    points: list[list[float]] = field(default_factory=list)  # each pair new, never changed
    fit: list[float] = field(default_factory=list)  # running sums (windows.Fit); [] = recompute
    above: bool = False


@dataclass(slots=True)
class EventState:
    """Event match: when the newest matching event happened."""

    life: Lifecycle = field(default_factory=Lifecycle)
    last_match: int | None = None
    reporters: list[str] = field(default_factory=list)  # per: segment: who reported the episode


@dataclass(slots=True)
class EventCountState:
    """Event count: times of the matching events in the window, oldest first."""

    life: Lifecycle = field(default_factory=Lifecycle)
    times: list[int] = field(default_factory=list)


@dataclass(slots=True)
class QualityState:
    """Water quality: the newest sample's time, the worst class of the open episode, and each
    parameter's newest value and when it was measured (rules.quality: the station is judged on
    every parameter still valid, not on the one message). A snapshot from before these were
    kept loads with none: the first samples after it fill them in.
    """

    life: Lifecycle = field(default_factory=Lifecycle)
    last_ts: int | None = None
    worst: int | None = None
    values: dict[str, float] = field(default_factory=dict)  # field → newest value
    measured: dict[str, int] = field(default_factory=dict)  # field → its device time
    # Parameters not yet seen while a condition of unknown cause is open (restored from an old
    # snapshot, or adopted from the alert store): it does not clear before each has a value.
    pending: list[str] = field(default_factory=list)


@dataclass(slots=True)
class SilenceState:
    """Silence: when the device and each watched channel last spoke, and what is wrong now."""

    life: Lifecycle = field(default_factory=Lifecycle)
    last_seen: int | None = None  # newest ts of any message (or when watching began)
    heard: bool = False  # a message has arrived (False: armed by watch_unseen only)
    offline_ts: int | None = None  # an offline status newer than every other message
    last_telemetry: int | None = None
    channels: dict[str, int] = field(default_factory=dict)  # field → newest ts reporting it
    cause: str | None = None  # Reason value while active: silent, offline or channel_quiet
    quiet: list[str] = field(default_factory=list)  # quiet channels, while channel_quiet
    stopped: bool = False  # the newest status announced a planned stop
    heard_at: int | None = None  # the caller's read time of the newest arrival (ingest/readclock)


@dataclass(slots=True)
class AlongState:
    """Along the river, for one downstream station: each upstream condition that reaches it,
    keyed ``{rule id}/{device id}``, as [opened, expected arrival, cleared or None]."""

    life: Lifecycle = field(default_factory=Lifecycle)
    sources: dict[str, list[int | None]] = field(default_factory=dict)


@dataclass(slots=True)
class DeviceState:
    """Per device, across rules: its newest device time and recent (seq, ts) for duplicates."""

    newest_ts: int | None = None
    # What the device sent, as runs (rules.seen): tuples, replaced and never changed.
    seen: list[Run] = field(default_factory=list)
    # The newest stamp it sent past its arrival (a fast clock) and the time it was judged at
    # (rules.engine._judged_ahead): a redelivery of it is judged no later.
    ahead_sent: int | None = None
    ahead_judged: int | None = None


FormState = (
    ThresholdState
    | RateState
    | EventState
    | EventCountState
    | QualityState
    | SilenceState
    | AlongState
)
S = TypeVar(
    "S",
    ThresholdState,
    RateState,
    EventState,
    EventCountState,
    QualityState,
    SilenceState,
    AlongState,
)


def _life(life: Lifecycle) -> dict[str, Any]:
    return {
        "open": life.open,
        "active": life.active,
        "opened_ts": life.opened_ts,
        "cleared_ts": life.cleared_ts,
        "repeats": life.repeats,
        "flapping": life.flapping,
        "flips": life.flips.copy(),
    }


def _threshold(st: ThresholdState) -> dict[str, Any]:
    return {
        "life": _life(st.life),
        "last_ts": st.last_ts,
        "pending_since": st.pending_since,
        "clear_since": st.clear_since,
        "above": st.above,
    }


def _rate(st: RateState) -> dict[str, Any]:
    return {
        "life": _life(st.life),
        "last_ts": st.last_ts,
        "points": st.points.copy(),  # the [ts, value] pairs are shared: never changed
        "fit": st.fit.copy(),
        "above": st.above,
    }


def _event(st: EventState) -> dict[str, Any]:
    return {"life": _life(st.life), "last_match": st.last_match, "reporters": st.reporters.copy()}


def _along(st: AlongState) -> dict[str, Any]:
    return {"life": _life(st.life), "sources": {k: v.copy() for k, v in st.sources.items()}}


def _event_count(st: EventCountState) -> dict[str, Any]:
    return {"life": _life(st.life), "times": st.times.copy()}


def _quality(st: QualityState) -> dict[str, Any]:
    return {
        "life": _life(st.life),
        "last_ts": st.last_ts,
        "worst": st.worst,
        "values": st.values.copy(),
        "measured": st.measured.copy(),
        "pending": st.pending.copy(),
    }


def _silence(st: SilenceState) -> dict[str, Any]:
    return {
        "life": _life(st.life),
        "last_seen": st.last_seen,
        "heard": st.heard,
        "offline_ts": st.offline_ts,
        "last_telemetry": st.last_telemetry,
        "channels": st.channels.copy(),
        "cause": st.cause,
        "quiet": st.quiet.copy(),
        "stopped": st.stopped,
        "heard_at": st.heard_at,
    }


def _device(st: DeviceState) -> dict[str, Any]:
    return {  # runs shared: never changed
        "newest_ts": st.newest_ts,
        "seen": st.seen.copy(),
        "ahead_sent": st.ahead_sent,
        "ahead_judged": st.ahead_judged,
    }


_ENCODERS: dict[type[Any], Callable[[Any], dict[str, Any]]] = {
    ThresholdState: _threshold,
    RateState: _rate,
    EventState: _event,
    EventCountState: _event_count,
    QualityState: _quality,
    SilenceState: _silence,
    AlongState: _along,
    DeviceState: _device,
}


def encode(state: FormState | DeviceState) -> dict[str, Any]:
    """JSON-ready plain data, equal to ``dataclasses.asdict(state)``: new dicts and lists that
    later changes to ``state`` leave as they are; only the immutable-by-convention pairs inside
    are shared (see the module docstring)."""
    return _ENCODERS[type(state)](state)


def decode(cls: type[S], data: Any) -> S:
    """Rebuild a form state from ``encode``'s output; raise SnapshotError if it does not fit."""
    if not isinstance(data, dict):
        raise SnapshotError(f"{cls.__name__}: expected a mapping")
    try:
        fields = _known(cls, data)
        life = Lifecycle(**_known(Lifecycle, fields.pop("life", {})))
        return cls(life=life, **fields)
    except TypeError as e:
        raise SnapshotError(f"{cls.__name__}: {e}") from None


def _known(cls: type[Any], data: Any) -> dict[str, Any]:
    """The entries of ``data`` that are fields of ``cls``: a snapshot written by a newer
    version (a field added) is read for what this one knows, so a rollback starts."""
    if not isinstance(data, dict):
        raise TypeError(f"expected a mapping, not {type(data).__name__}")
    names = cls.__dataclass_fields__
    return {k: v for k, v in data.items() if k in names}


def decode_device(data: Any) -> DeviceState:
    """Rebuild a DeviceState."""
    if not isinstance(data, dict):
        raise SnapshotError("DeviceState: expected a mapping")
    try:
        state = DeviceState(**_known(DeviceState, data))
        # Runs come back from JSON as lists; [seq, ts] pairs are the format before runs.
        state.seen = (
            from_pairs(state.seen)  # type: ignore[arg-type]
            if any(len(r) == 2 for r in state.seen)
            else [(int(a), int(b), int(c), int(d)) for a, b, c, d in state.seen]
        )
        return state
    except (TypeError, ValueError) as e:
        raise SnapshotError(f"DeviceState: {e}") from None
