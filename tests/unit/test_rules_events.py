"""Event match and event count: repeats update, clear_after, window boundaries, late events."""

from __future__ import annotations

from tests.unit.test_rules_support import (
    MINUTE,
    SECOND,
    T0,
    Feeder,
    actions,
    base,
    gate_event,
    gate_telemetry,
    road_event,
    ruleset,
)

FORCED = base("forced", "event", "gate") + "  events: [forced_open]\n"
HELD = base("held", "event", "gate") + "  events: [held_open]\n  clear_after: 10m\n"
TAILGATING = (
    base("tailgating", "event_count", "gate")
    + "  events: [tailgating]\n  count: 3\n  window: 10m\n"
)


def test_event_opens_once_and_repeats_update_until_resolved_by_hand() -> None:
    feed = Feeder(ruleset(FORCED))
    [opened] = feed("g1", gate_event(T0, "forced_open"))
    assert (opened.action, opened.value, opened.detail) == (
        "open",
        "forced_open",
        "forced_open event",
    )
    assert feed("g1", gate_event(T0 + SECOND, "pass")) == []
    assert actions(feed("g1", gate_event(T0 + MINUTE, "forced_open"))) == [("update", "event")]
    assert feed.tick(T0 + 24 * 60 * MINUTE) == []  # no clear_after: stays open
    assert feed.engine.resolve("forced", "g1", T0 + 2 * MINUTE)
    assert not feed.engine.is_open("forced", "g1")
    # A late event no newer than what the device had sent when the alert was resolved
    # belongs to the resolved alert; one newer is an event nobody has seen yet (a device that
    # was offline sends it late): a new alert.
    assert feed("g1", gate_event(T0 + 30 * SECOND, "forced_open")) == []
    assert actions(feed("g1", gate_event(T0 + 90 * SECOND, "forced_open"))) == [("open", "event")]


def test_clear_after_runs_on_device_time_from_the_newest_match() -> None:
    feed = Feeder(ruleset(HELD))
    assert actions(feed("g1", gate_event(T0, "held_open"))) == [("open", "event")]
    assert actions(feed("g1", gate_event(T0 + 5 * MINUTE, "held_open"))) == [("update", "event")]
    assert feed.tick(T0 + 15 * MINUTE - 1) == []
    [cleared] = feed.tick(T0 + 20 * MINUTE)
    assert (cleared.action, cleared.reason.value) == ("clear", "expired")
    assert cleared.ts_ms == T0 + 15 * MINUTE  # when the quiet period ended, not when we looked
    assert cleared.detail == "no held_open event for 10m"


def test_a_new_match_after_the_quiet_period_closes_the_old_one_first_without_a_tick() -> None:
    feed = Feeder(ruleset(HELD))
    feed("g1", gate_event(T0, "held_open"))
    out = feed("g1", gate_event(T0 + 30 * MINUTE, "held_open"))
    assert actions(out) == [("clear", "expired"), ("open", "event")]
    assert out[0].ts_ms == T0 + 10 * MINUTE


def test_late_events_for_event_rules() -> None:
    feed = Feeder(ruleset(HELD))
    feed("g1", gate_telemetry(T0 + 60 * MINUTE))  # the device's clock is at +60 min
    # A held_open from 55 minutes ago would have cleared by now: nothing to open.
    assert feed("g1", gate_event(T0 + 5 * MINUTE, "held_open")) == []
    # One from 2 minutes ago is still current: it opens.
    assert actions(feed("g1", gate_event(T0 + 58 * MINUTE, "held_open"))) == [("open", "event")]
    # A late one while open is a repeat.
    assert actions(feed("g1", gate_event(T0 + 57 * MINUTE, "held_open"))) == [("update", "event")]
    [cleared] = feed.tick(T0 + 70 * MINUTE)
    assert cleared.ts_ms == T0 + 68 * MINUTE
    # A late event from before the clear is part of the closed episode.
    assert feed("g1", gate_event(T0 + 67 * MINUTE, "held_open")) == []


def test_count_opens_at_the_nth_event_in_the_window_and_updates_on_more() -> None:
    feed = Feeder(ruleset(TAILGATING))
    assert feed("g1", gate_event(T0, "tailgating")) == []
    assert feed("g1", gate_event(T0 + 4 * MINUTE, "tailgating")) == []
    [opened] = feed("g1", gate_event(T0 + 9 * MINUTE, "tailgating"))
    assert (opened.action, opened.value, opened.ts_ms) == ("open", 3.0, T0 + 9 * MINUTE)
    assert opened.detail == "3 tailgating events within 10m"
    assert actions(feed("g1", gate_event(T0 + 9 * MINUTE + 1, "tailgating"))) == [
        ("update", "event_count")
    ]
    # Four events; the count falls below 3 when the second one leaves: 4 min + 10 min.
    assert feed.tick(T0 + 14 * MINUTE - 1) == []
    [cleared] = feed.tick(T0 + 14 * MINUTE)
    assert (cleared.action, cleared.reason.value, cleared.ts_ms) == (
        "clear",
        "below_count",
        T0 + 14 * MINUTE,
    )
    assert cleared.value == 2.0


def test_events_exactly_a_window_apart_do_not_count_together() -> None:
    feed = Feeder(ruleset(TAILGATING))
    assert feed("g1", gate_event(T0, "tailgating")) == []
    assert feed("g1", gate_event(T0 + 5 * MINUTE, "tailgating")) == []
    assert feed("g1", gate_event(T0 + 10 * MINUTE, "tailgating")) == []  # T0 has just left
    assert actions(feed("g1", gate_event(T0 + 10 * MINUTE + 1, "tailgating"))) == [
        ("open", "event_count")
    ]


def test_late_events_inside_the_window_count_and_old_ones_do_not() -> None:
    feed = Feeder(ruleset(TAILGATING))
    feed("g1", gate_event(T0 + 20 * MINUTE, "tailgating"))
    feed("g1", gate_event(T0 + 25 * MINUTE, "tailgating"))
    assert feed("g1", gate_event(T0 + 14 * MINUTE, "tailgating")) == []  # outside (15, 25]
    [opened] = feed("g1", gate_event(T0 + 16 * MINUTE, "tailgating"))  # inside: counts
    assert opened.action == "open" and opened.ts_ms == T0 + 25 * MINUTE


def test_the_count_clears_on_a_later_event_without_a_tick() -> None:
    feed = Feeder(ruleset(TAILGATING))
    for minute in (0, 1, 2):
        feed("g1", gate_event(T0 + minute * MINUTE, "tailgating"))
    assert feed.engine.is_open("tailgating", "g1")
    out = feed("g1", gate_event(T0 + 30 * MINUTE, "tailgating"))
    assert actions(out) == [("clear", "below_count")]
    assert out[0].ts_ms == T0 + 10 * MINUTE


def test_other_events_and_kinds_are_not_counted() -> None:
    text = (
        base("speeding", "event_count", "road") + "  events: [speeding]\n  count: 2\n  window: 1m\n"
    )
    feed = Feeder(ruleset(text))
    assert feed("d1", road_event(T0, "speeding")) == []
    assert feed("d1", road_event(T0 + 1, "accident")) == []
    assert actions(feed("d1", road_event(T0 + 2, "speeding"))) == [("open", "event_count")]


def test_a_late_burst_older_than_the_window_opens_nothing() -> None:
    """Issue 14 item 10: a burst of tailgating 56 minutes old (the device's newest is now)
    opened and cleared at once on ec1dc14 — two phone messages for nothing current."""
    feed = Feeder(ruleset(TAILGATING))
    now = T0 + 60 * MINUTE
    assert feed("g1", gate_event(now, "pass")) == []
    late = [feed("g1", gate_event(now - 56 * MINUTE + i * SECOND, "tailgating")) for i in range(5)]
    assert late == [[]] * 5
    assert feed.tick(now + MINUTE) == []
    # A burst inside the window still counts, late or not.
    for i in range(3):
        out = feed("g1", gate_event(now - 5 * MINUTE + i * SECOND, "tailgating"))
    assert actions(out) == [("open", "event_count")]


def test_a_resolved_burst_is_counted_anew() -> None:
    """Issue 14 review (F8): ``forget`` kept the counted times, so ONE new event after a
    person's resolve reopened the burst alert at once ("3 events" of which 2 were resolved)."""
    feed = Feeder(ruleset(TAILGATING))
    for i in range(3):
        feed("g1", gate_event(T0 + i * SECOND, "tailgating"))
    assert feed.engine.is_open("tailgating", "g1")
    assert feed.engine.resolve("tailgating", "g1", T0 + 30 * SECOND)
    assert feed("g1", gate_event(T0 + MINUTE, "tailgating")) == []
    assert feed("g1", gate_event(T0 + MINUTE + SECOND, "tailgating")) == []
    [opened] = feed("g1", gate_event(T0 + MINUTE + 2 * SECOND, "tailgating"))
    assert (opened.action, opened.value) == ("open", 3.0)
