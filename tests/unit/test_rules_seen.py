"""Redeliveries are recognised however many there are (issue 14 item 2, issue 13 item 2).

Unit tests: the broker's redelivery of a whole in-flight window (20,000 messages) after a
crash or reconnect is what the engine must recognise; feeding the engine directly shows every
message's outcome, which the real stack hides behind InfluxDB's own deduplication.
"""

from __future__ import annotations

import json
import random

from rules.seen import MAX_RUNS, Run, from_pairs, is_repeat, remember
from rules.state import decode_device
from tests.unit.test_rules_state import RULES
from tests.unit.test_rules_support import SECOND, T0, Feeder, base, gate_event, river, ruleset

WINDOW = 20_000  # max_inflight_messages in mosquitto.conf


def test_a_whole_window_redelivered_changes_nothing() -> None:
    """A gate forced open now and then, and a river, 20,000 messages; the broker sends them
    all again, to the running engine and to one restored from its snapshot, before and after
    a person resolves the alert. Before: past 64 per device, each redelivered forced_open was
    a repeat of the open alert, and the river's readings went into the rate window again."""
    feed = Feeder(ruleset(RULES))
    sent = []
    for k in range(1, WINDOW // 2 + 1):
        ts = T0 + k * SECOND
        sent.append(("g1", gate_event(ts, "forced_open" if k % 1000 == 1 else "pass", seq=k)))
        sent.append(("r1", river(ts, seq=k, water_level_m=210.0 + (k % 50) / 100)))
    transitions = [t for device, message in sent for t in feed(device, message)]
    assert ("open", "forced") in {(t.action, t.rule_id) for t in transitions}
    for resolved in (False, True):
        if resolved:
            assert feed.engine.resolve("forced", "g1", T0 + (WINDOW + 1) * SECOND)
        before = json.dumps(feed.engine.snapshot())
        for engine_feed in (feed, feed.restarted()):
            assert [t for device, message in sent for t in engine_feed(device, message)] == []
        assert json.dumps(feed.engine.snapshot()) == before
    assert all(len(d["seen"]) == 1 for d in feed.engine.snapshot()["devices"].values())


def test_late_messages_fill_gaps_and_runs_join() -> None:
    runs: list[Run] = []
    for seq in (1, 2, 3, 5, 6, 9):
        remember(runs, seq, T0 + seq)
    assert runs == [(1, 3, T0 + 1, T0 + 3), (5, 6, T0 + 5, T0 + 6), (9, 9, T0 + 9, T0 + 9)]
    assert not is_repeat(runs, 4, T0 + 4)  # late, never seen: evaluated
    remember(runs, 4, T0 + 4)
    assert runs == [(1, 6, T0 + 1, T0 + 6), (9, 9, T0 + 9, T0 + 9)]
    for seq in (1, 4, 6, 9):
        assert is_repeat(runs, seq, T0 + seq)
    assert not is_repeat(runs, 7, T0 + 7)


def test_a_restarted_device_counting_from_one_again_is_not_a_repeat() -> None:
    runs: list[Run] = []
    for seq in range(1, 101):
        remember(runs, seq, T0 + seq * SECOND)
    later = T0 + 1000 * SECOND
    assert not is_repeat(runs, 1, later) and not is_repeat(runs, 50, later)
    remember(runs, 1, later)
    assert is_repeat(runs, 1, later) and is_repeat(runs, 1, T0 + SECOND)
    assert not is_repeat(runs, 1, T0 + 2 * SECOND)  # same seq, another time: another message


def test_runs_stay_bounded_whatever_a_device_sends() -> None:
    rng = random.Random(3)
    runs: list[Run] = []
    for _ in range(5000):
        seq, ts = rng.randrange(10**6), rng.randrange(T0, T0 + 10**9)
        if not is_repeat(runs, seq, ts):
            remember(runs, seq, ts)
        assert len(runs) <= MAX_RUNS
    newest = max(r[3] for r in runs)
    assert any(r[3] == newest for r in runs)  # the oldest ends were forgotten first


def test_a_snapshot_of_the_older_format_is_read() -> None:
    state = decode_device({"newest_ts": T0 + 3, "seen": [[1, T0 + 1], [2, T0 + 2], [7, T0 + 3]]})
    assert state.seen == from_pairs([[1, T0 + 1], [2, T0 + 2], [7, T0 + 3]])
    assert state.seen == [(1, 2, T0 + 1, T0 + 2), (7, 7, T0 + 3, T0 + 3)]


def test_a_restart_that_sets_a_fast_clock_right_is_not_taken_for_a_redelivery() -> None:
    """Issue 14 review F6: a gate 290 s fast (the decoder accepts 300) sends seq 1..300, one a
    second, then restarts with its clock set right and counts from 1 again: its new (seq, ts)
    fell inside the old run's seqs and span and were dropped as redeliveries for ~5 minutes,
    a forced_open among them. The old messages sent again are still recognised, before and
    after the new ones (and the new ones are, too)."""
    feed = Feeder(ruleset(base("forced", "event", "gate") + "  events: [forced_open]\n"))
    fast = 290 * SECOND
    old = [gate_event(T0 + k * SECOND + fast, "pass", seq=k) for k in range(1, 301)]
    for message in old:
        assert feed("g1", message) == []
    new = [
        gate_event(T0 + (301 + j) * SECOND, "forced_open" if j == 5 else "pass", seq=j)
        for j in range(1, 11)
    ]
    opened = [t for message in new for t in feed("g1", message)]
    assert [(t.action, t.ts_ms) for t in opened] == [("open", T0 + 306 * SECOND)]
    for engine_feed in (feed, feed.restarted()):
        for message in old + new:  # the broker sends everything again
            assert engine_feed("g1", message) == []
