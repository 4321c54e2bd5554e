"""Rate of change: slope over the window, trusted after min_span, clear below half, late data."""

from __future__ import annotations

from rules.transition import Transition
from tests.unit.test_rules_support import MINUTE, T0, Feeder, actions, base, river, ruleset

RISING = (
    base("rising", "rate_of_change", "river")
    + "  field: water_level_m\n  rise: 0.3\n  per: 1h\n  window: 30m\n"
)


def at(feed: Feeder, minutes: float, metres: float) -> list[Transition]:
    return feed("r1", river(T0 + round(minutes * MINUTE), water_level_m=metres))


def test_opens_above_the_rate_once_the_readings_span_half_the_window() -> None:
    feed = Feeder(ruleset(RISING))
    # 1 m per hour from the start: far above 0.3, but the window is trusted after 15 minutes.
    for minute in range(15):
        assert at(feed, minute, 200 + minute / 60) == []
    [opened] = at(feed, 15, 200.25)
    assert opened.action == "open" and opened.reason.value == "rate_of_change"
    assert opened.value == 1.0
    assert opened.detail == "water_level_m rising 1 per 1h over 15m (limit 0.3)"
    assert at(feed, 16, 200 + 16 / 60) == []  # still rising: no repeat while it holds


def test_exactly_at_the_rate_does_not_open_and_just_over_does() -> None:
    feed = Feeder(ruleset(RISING))
    for minute in range(0, 31, 5):  # 0.3 m/h exactly (0.025 m per 5 minutes)
        assert at(feed, minute, 200 + 0.025 * minute / 5) == []
    feed = Feeder(ruleset(RISING))
    out = []
    for minute in range(0, 31, 5):
        out += at(feed, minute, 200 + 0.0255 * minute / 5)  # 0.306 m/h
    assert actions(out) == [("open", "rate_of_change")]


def test_clears_below_half_the_rate_and_falling_rules_mirror() -> None:
    feed = Feeder(ruleset(RISING))
    out = []
    for minute in range(0, 31):
        out += at(feed, minute, 200 + minute / 60)  # 1 m/h
    assert actions(out) == [("open", "rate_of_change")]
    out = []
    for minute in range(31, 120):
        out += at(feed, minute, 200.5)  # flat from here: the slope decays as the window slides
    [cleared] = out
    assert cleared.action == "clear" and isinstance(cleared.value, float)
    assert cleared.value < 0.15
    falling = ruleset(RISING.replace("rise: 0.3", "fall: 0.3"))
    feed = Feeder(falling)
    out = []
    for minute in range(0, 31):
        out += at(feed, minute, 200 - minute / 60)
    assert actions(out) == [("open", "rate_of_change")]
    assert out[0].detail.startswith("water_level_m falling 1 per 1h")


def test_old_readings_leave_the_window() -> None:
    feed = Feeder(ruleset(RISING))
    at(feed, 0, 190.0)  # far below: would make a huge slope if it stayed in the window
    for minute in range(40, 80):
        assert at(feed, minute, 200.0) == []


def test_late_readings_inside_the_window_are_merged_not_evaluated() -> None:
    feed = Feeder(ruleset(RISING))
    for minute in range(0, 21, 5):
        assert at(feed, minute, 200.0) == []
    # Late readings from inside the window suggest a steep rise; they trigger nothing now...
    assert at(feed, 16, 201.0) == []
    assert at(feed, 17, 201.5) == []
    # ...but the next in-order reading sees them in its window.
    assert actions(at(feed, 21, 200.0)) == [("open", "rate_of_change")]
