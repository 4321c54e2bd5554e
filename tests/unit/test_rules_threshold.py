"""Threshold rules: exactly at the line, hysteresis band, `for` held and interrupted, late data."""

from __future__ import annotations

from devices.registry import parse_registry
from rules.transition import Transition
from tests.unit.smallcity import SMALL_AREAS, SMALL_DEVICES
from tests.unit.test_rules_support import MINUTE, SECOND, T0, Feeder, actions, base, river, ruleset

# r1: warning_level_m 211.5
WARNING = (
    base("high", "threshold", "river")
    + "  field: water_level_m\n  op: '>'\n  attribute: warning_level_m\n  for: 2m\n"
    + "  clear: {op: '<', attribute: warning_level_m, offset: -0.1}\n"
)
CONSTANT = base("hot", "threshold", "river") + "  field: water_temp_c\n  op: '>='\n  value: 30\n"


def level(feed: Feeder, minutes: float, metres: float) -> list[Transition]:
    return feed("r1", river(T0 + round(minutes * MINUTE), water_level_m=metres))


def test_opens_only_after_holding_for_the_duration_on_device_time() -> None:
    feed = Feeder(ruleset(WARNING))
    assert level(feed, 0, 211.6) == []
    assert level(feed, 1, 211.7) == []
    assert level(feed, 1.99, 211.8) == []
    [opened] = level(feed, 2, 211.9)
    assert (opened.action, opened.rule_id, opened.device_id) == ("open", "high", "r1")
    assert opened.ts_ms == T0 + 2 * MINUTE and opened.value == 211.9
    assert opened.detail == "water_level_m 211.9 > warning_level_m (211.5) for 2m"
    assert opened.reason.value == "threshold"
    assert level(feed, 3, 212.5) == []  # still above: nothing new


def test_exactly_at_the_threshold_does_not_trigger() -> None:
    feed = Feeder(ruleset(WARNING))
    for minute in range(10):
        assert level(feed, minute, 211.5) == []
    feed = Feeder(ruleset(CONSTANT))
    [opened] = feed("r1", river(T0, water_temp_c=30.0))  # >= includes the line
    assert opened.action == "open"
    [cleared] = feed("r1", river(T0 + SECOND, water_temp_c=29.99))  # default clear: < 30
    assert (cleared.action, cleared.reason.value) == ("clear", "cleared")


def test_for_interrupted_restarts_the_count() -> None:
    feed = Feeder(ruleset(WARNING))
    assert level(feed, 0, 211.6) == []
    assert level(feed, 1.5, 211.5) == []  # at the line: not above, the run is broken
    assert level(feed, 2, 211.6) == []  # a new run starts here
    assert level(feed, 3.9, 211.7) == []
    assert actions(level(feed, 4, 211.8)) == [("open", "threshold")]


def test_hysteresis_band_holds_it_open_and_a_return_above_is_a_repeat() -> None:
    feed = Feeder(ruleset(WARNING))
    level(feed, 0, 212.0)
    assert actions(level(feed, 2, 212.0)) == [("open", "threshold")]
    assert level(feed, 3, 211.45) == []  # below warning but not 0.1 below: the band
    assert level(feed, 4, 211.40) == []  # exactly warning - 0.1: still not below it
    [again] = level(feed, 5, 211.6)
    assert (again.action, again.detail) == (
        "update",
        "water_level_m 211.6 > warning_level_m (211.5) again",
    )
    [cleared] = level(feed, 6, 211.39)
    assert cleared.action == "clear" and cleared.ts_ms == T0 + 6 * MINUTE
    assert cleared.detail == "water_level_m 211.39 < warning_level_m - 0.1 (211.4)"
    assert level(feed, 7, 211.0) == []


def test_clear_for_needs_the_clear_condition_to_hold() -> None:
    text = CONSTANT + "  clear: {op: '<', value: 25}\n  clear_for: 5m\n"
    feed = Feeder(ruleset(text))
    assert actions(feed("r1", river(T0, water_temp_c=31.0))) == [("open", "threshold")]
    assert feed("r1", river(T0 + 1 * MINUTE, water_temp_c=24.0)) == []
    assert feed("r1", river(T0 + 3 * MINUTE, water_temp_c=26.0)) == []  # back in the band
    assert feed("r1", river(T0 + 4 * MINUTE, water_temp_c=24.0)) == []
    assert feed("r1", river(T0 + 8 * MINUTE, water_temp_c=24.0)) == []
    assert actions(feed("r1", river(T0 + 9 * MINUTE, water_temp_c=24.0))) == [("clear", "cleared")]


def test_late_and_out_of_order_readings_are_ignored() -> None:
    feed = Feeder(ruleset(WARNING))
    level(feed, 0, 212.0)
    level(feed, 1, 212.0)
    # A reading from before the run, below the line, arrives late: it must not break the run.
    assert level(feed, 0.5, 211.0) == []
    assert actions(level(feed, 2, 212.0)) == [("open", "threshold")]
    # A late reading far below the clear line must not clear it.
    assert level(feed, 1.5, 200.0) == []
    # Same timestamp again (another message at the same instant): ignored too.
    assert level(feed, 2, 200.0) == []
    assert actions(level(feed, 3, 200.0)) == [("clear", "cleared")]


def test_messages_without_the_field_and_devices_outside_the_filter_are_skipped() -> None:
    feed = Feeder(ruleset(WARNING.replace("kinds: [river]", "kinds: [river]\n  devices: [r2]")))
    assert feed("r1", river(T0, water_level_m=300.0)) == []
    feed = Feeder(ruleset(WARNING))
    assert feed("r1", river(T0, ph=7.0)) == []


def test_each_device_compares_with_its_own_attribute() -> None:
    feed = Feeder(ruleset(WARNING.replace("for: 2m", "for: 0s")))
    # r1 warns at 211.5, r2 at 212.0.
    assert actions(feed("r1", river(T0, water_level_m=211.8))) == [("open", "threshold")]
    assert feed("r2", river(T0, water_level_m=211.8)) == []
    assert actions(feed("r2", river(T0 + 1, water_level_m=212.1))) == [("open", "threshold")]


def test_a_level_plus_an_offset_is_the_same_number_on_every_station() -> None:
    """Issue 14 item 11: a level plus an offset lands a float step off (200.02 - 0.1 is
    199.92000000000002), so a reading of exactly the sum met `>= warning - 0.1` on some
    stations and not on others, and the message contradicted itself. Five stations whose
    level - 0.1 is off by a float step: a reading of exactly the sum meets `>=` on each."""
    warnings = [200.02, 200.58, 201.24, 201.8, 202.36]
    assert all(w - 0.1 > round(w - 0.1, 6) for w in warnings)  # each off before the fix
    devices = [
        {
            **SMALL_DEVICES[0],
            "id": f"s{i}",
            "normal_level_m": w - 2,
            "warning_level_m": w,
            "guarantee_level_m": w + 2,
        }
        for i, w in enumerate(warnings)
    ]
    registry = parse_registry({"areas": SMALL_AREAS, "devices": devices}, "five.yaml")
    rules = ruleset(
        base("high", "threshold", "river")
        + "  field: water_level_m\n  op: '>='\n  attribute: warning_level_m\n  offset: -0.1\n",
        registry,
    )
    feed = Feeder(rules, registry)
    for i, w in enumerate(warnings):
        exact = float(f"{w - 0.1:.6f}")  # what a gauge reads: 199.92, ...
        [opened] = feed(f"s{i}", river(T0, water_level_m=exact))
        assert opened.action == "open", (w, exact)
        assert f"({exact:g})" in opened.detail, opened.detail
