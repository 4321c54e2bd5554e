"""Plain-data state: encoding by hand (as asdict, without its cost), snapshots that stay as taken,
and state that stays bounded whatever the message rate (the dedup memory above all)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from rules.engine import Engine
from rules.rate import CAP
from rules.state import (
    AlongState,
    DeviceState,
    EventCountState,
    EventState,
    Lifecycle,
    QualityState,
    RateState,
    SilenceState,
    ThresholdState,
    decode,
    decode_device,
    encode,
)
from tests.unit.test_rules_support import (
    MINUTE,
    SECOND,
    T0,
    Feeder,
    actions,
    base,
    gate_event,
    gate_telemetry,
    river,
    ruleset,
)

LIFE = Lifecycle(
    open=True,
    active=True,
    opened_ts=T0,
    cleared_ts=T0 - 1,
    repeats=3,
    flapping=True,
    flips=[T0 - 2, T0],
)
# One of each class with every field away from its default, so a field the encoder forgets
# shows up as a difference from asdict.
STATES: list[Any] = [
    ThresholdState(life=LIFE, last_ts=T0, pending_since=T0 - 5, clear_since=T0 - 4, above=True),
    RateState(life=LIFE, last_ts=T0, points=[[T0 - 9, 1.5], [T0, 2.0]], fit=[1.0] * 7, above=True),
    EventState(life=LIFE, last_match=T0, reporters=["road-a", "road-b"]),
    AlongState(
        life=LIFE, sources={"r/river-a": [T0 - 9, T0 + 60, None], "r/river-b": [T0, T0, T0]}
    ),
    EventCountState(life=LIFE, times=[T0 - 3, T0 - 2, T0]),
    QualityState(
        life=LIFE,
        last_ts=T0,
        worst=4,
        values={"nh3n_mgl": 1.6, "ph": 7.2},
        measured={"nh3n_mgl": T0 - 3_600_000, "ph": T0},
        pending=["tp_mgl"],
    ),
    SilenceState(
        life=LIFE,
        last_seen=T0,
        heard=True,
        offline_ts=T0 - 7,
        last_telemetry=T0 - 1,
        channels={"water_level_m": T0 - 1, "ph": T0 - 60},
        cause="channel_quiet",
        quiet=["ph"],
        stopped=True,
        heard_at=T0 + 3,
    ),
    DeviceState(
        newest_ts=T0,
        seen=[(1, 2, T0 - 1, T0), (1, 1, T0 + 5, T0 + 5)],
        ahead_sent=T0 + 60_000,
        ahead_judged=T0 + 2_000,
    ),
]

EVENTS = base("forced", "event", "gate") + "  events: [forced_open]\n"
RISING = (
    base("rising", "rate_of_change", "river")
    + "  field: water_level_m\n  rise: 0.3\n  per: 1h\n  window: 30m\n"
)
TAILGATING = (
    base("tailgating", "event_count", "gate")
    + "  events: [tailgating]\n  count: 3\n  window: 10m\n"
)
SILENCE = base("silent", "silence", "gate, river, road") + "  channels: [water_level_m]\n"
RULES = EVENTS + RISING + TAILGATING + SILENCE


@pytest.mark.parametrize("state", STATES, ids=lambda s: type(s).__name__)
def test_encode_is_asdict_and_decode_rebuilds_the_state(state: Any) -> None:
    for f in dataclasses.fields(state):
        default = f.default_factory() if callable(f.default_factory) else f.default
        assert getattr(state, f.name) != default, f"{f.name}: set it for this test to mean much"
    data = encode(state)
    assert data == dataclasses.asdict(state)
    assert list(data) == [f.name for f in dataclasses.fields(state)]  # the same JSON, key order
    again = json.loads(json.dumps(data))
    if isinstance(state, DeviceState):
        assert decode_device(again) == state
    else:
        assert decode(type(state), again) == state


@pytest.mark.parametrize("state", STATES, ids=lambda s: type(s).__name__)
def test_an_encoded_state_does_not_change_with_the_state(state: Any) -> None:
    fresh = json.loads(json.dumps(encode(state)))  # the shared LIFE must stay as it is
    state = decode_device(fresh) if isinstance(state, DeviceState) else decode(type(state), fresh)
    data = encode(state)
    text = json.dumps(data)
    # Every change the engine makes: lists grow and shrink, dicts change, pairs are replaced.
    for f in dataclasses.fields(state):
        value = getattr(state, f.name)
        if isinstance(value, list):
            value.append(value[-1])
            del value[0]
            value[0] = value[-1]
        elif isinstance(value, dict):
            value["new"] = 1
    if not isinstance(state, DeviceState):
        state.life.flips.append(T0 + 1)
        state.life.repeats += 1
    assert json.dumps(data) == text


def test_a_snapshot_stays_as_taken_while_the_engine_goes_on() -> None:
    feed = Feeder(ruleset(RULES))
    seq = 0
    for i in range(200):
        seq += 1
        feed("r1", river(T0 + i * 30 * SECOND, seq=seq, water_level_m=210.0 + i / 100))
        feed("g1", gate_event(T0 + i * 30 * SECOND, "tailgating", seq=seq))
    snapshot = feed.engine.snapshot()
    text = json.dumps(snapshot)
    for i in range(200, 400):  # the seen pairs and rate points all turn over
        seq += 1
        feed("r1", river(T0 + i * 30 * SECOND, seq=seq, water_level_m=210.0 + i / 100))
        feed("g1", gate_event(T0 + i * 30 * SECOND, "tailgating", seq=seq))
        feed.tick(T0 + i * 30 * SECOND)
    assert json.dumps(snapshot) == text
    assert json.dumps(feed.engine.snapshot()) != text


def test_state_stays_bounded_at_a_high_message_rate() -> None:
    """33 messages a second from each device (the benchmark's rate), for two minutes."""
    feed = Feeder(ruleset(RULES))
    sizes = []
    for i in range(4000):
        ts = T0 + i * 30  # ms
        feed("r1", river(ts, seq=i + 1, water_level_m=210.0 + (i % 7) / 100))
        feed("g1", gate_event(ts, "tailgating", seq=i + 1))
        feed("g1", gate_telemetry(ts + 1, seq=100_000 + i))
        if i % 33 == 0:
            feed.tick(ts)
        if i in (1000, 3999):
            sizes.append(len(json.dumps(feed.engine.snapshot())))
    snapshot = feed.engine.snapshot()
    for device in snapshot["devices"].values():
        assert 1 <= len(device["seen"]) <= 2  # runs of seqs (rules.seen): g1 counts two
    assert len(snapshot["rules"]["rising"]["states"]["r1"]["points"]) <= CAP
    assert len(snapshot["rules"]["tailgating"]["states"]["g1"]["times"]) <= 2 * 3 + 16
    assert sizes[1] <= sizes[0] + 256  # floats of other lengths in the sums, nothing more


def test_a_redelivery_is_dropped_even_after_a_restart() -> None:
    feed = Feeder(ruleset(RULES))
    n = 192

    def forced(k: int) -> Any:
        return gate_event(T0 + k * SECOND, "forced_open", seq=k)

    assert actions(feed("g1", forced(1))) == [("open", "event")]
    for k in range(2, n + 1):
        assert actions(feed("g1", forced(k))) == [("update", "event")]
    oldest_kept = 1
    assert feed("g1", forced(n)) == []
    assert feed("g1", forced(oldest_kept)) == []
    restarted = feed.restarted()
    assert restarted("g1", forced(n)) == []
    assert restarted("g1", forced(oldest_kept)) == []
    # Restored, the engine goes on exactly as the one that kept running.
    for k in range(n + 1, n + 100):
        message = forced(k)
        assert restarted("g1", message) == feed("g1", message) != []
        assert restarted("g1", message) == feed("g1", message) == []  # redelivered at once
    # However far back: the device's seqs are remembered as runs (rules.seen).
    assert restarted("g1", forced(2)) == []


def test_snapshot_and_restore_through_json_keep_everything_the_engine_had() -> None:
    feed = Feeder(ruleset(RULES))
    for i in range(300):
        ts = T0 + i * 20 * SECOND
        feed("r1", river(ts, seq=i + 1, water_level_m=210.0 + i / 50))
        if i % 5 == 0:
            feed("g1", gate_event(ts, "tailgating", seq=i + 1))
        feed.tick(ts)
    snapshot = json.loads(json.dumps(feed.engine.snapshot()))
    restored = Engine.restore(feed.engine.rules, feed.registry, snapshot)
    assert json.loads(json.dumps(restored.snapshot())) == snapshot
    assert restored.tick(T0 + 300 * 20 * SECOND + 10 * MINUTE) == feed.tick(
        T0 + 300 * 20 * SECOND + 10 * MINUTE
    )
