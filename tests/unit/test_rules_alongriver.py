"""Along the river and along the road: a condition upstream warns the stations downstream with
the water's travel time; one accident seen by several cameras of a segment is one incident.

On the example city (config/registry.yaml), whose Zi river stations and travel times the
expected figures below are worked out from by hand (docs/rules.md "along_river").
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from devices.kinds import Channel
from devices.registry import Registry, load_registry
from rules.engine import Engine
from rules.loader import parse_rules
from rules.model import RuleSet
from rules.problems import RulesError
from rules.transition import Transition
from tests.unit.test_rules_support import HOUR, MINUTE, T0, river, road_event

ROOT = Path(__file__).resolve().parents[2]
UP = "river-zj-0004"  # km 6 on the Zi river, the most upstream station
# Travel from km 6, by hand: 12/28 × 180 min to km 18; 18/28 × 180 to km 24; 22/28 × 180 +
# 6/12 × 80 to km 34; + 6/12 × 80 + 12/35 × 240 to km 52; + 22/35 × 240 to km 62.
TRAVEL_MIN = {
    "river-zj-0003": 12 / 28 * 180,
    "river-zj-0002": 18 / 28 * 180,
    "river-zj-0001": 22 / 28 * 180 + 6 / 12 * 80,
    "river-zj-0005": 22 / 28 * 180 + 80 + 12 / 35 * 240,
    "river-zj-0006": 22 / 28 * 180 + 80 + 22 / 35 * 240,
}

RULES = """
rules:
- id: over_warning
  type: threshold
  name: over warning
  name_zh: 超警
  severity: major
  kinds: [river]
  field: water_level_m
  op: ">"
  attribute: warning_level_m
- id: wave
  type: along_river
  name: wave
  name_zh: 洪水演进
  severity: warning
  kinds: [river]
  after: [over_warning]
  within: {within}
  hold: 1h
- id: accident
  type: event
  name: accident
  name_zh: 事故
  severity: critical
  kinds: [road]
  events: [accident]
  per: segment
"""


@pytest.fixture(scope="module")
def city() -> Registry:
    return load_registry(ROOT / "config" / "registry.yaml")


def rules(city: Registry, within: str = "8h") -> RuleSet:
    return parse_rules(yaml.safe_load(RULES.replace("{within}", within)), "t.yaml", city)


def level(engine: Engine, city: Registry, device: str, ts: int, m: float) -> list[Transition]:
    return engine.observe(city.devices[device], Channel.TELEMETRY, river(ts, water_level_m=m), ts)


def waves(found: list[Transition], action: str = "open") -> dict[str, Transition]:
    return {t.device_id: t for t in found if t.rule_id == "wave" and t.action == action}


def test_a_flood_upstream_warns_every_station_downstream_with_its_travel_time(
    city: Registry,
) -> None:
    engine = Engine(rules(city), city)
    found = level(engine, city, UP, T0, 214.0)  # warning 213.4
    assert ("over_warning", UP, "open") in [(t.rule_id, t.device_id, t.action) for t in found]
    opened = waves(found)
    assert set(opened) == set(TRAVEL_MIN)  # downstream only: none upstream, none on 邵水
    for device_id, minutes in TRAVEL_MIN.items():
        t = opened[device_id]
        assert t.ts_ms == T0  # told when it happens upstream, not when the water arrives
        assert t.value == pytest.approx(round(minutes, 1))
        assert f"expected here in {minutes:.0f} min" in t.detail
        assert UP in t.detail
    assert "12 km upstream" in opened["river-zj-0003"].detail


def test_within_limits_how_far_down_it_tells(city: Registry) -> None:
    engine = Engine(rules(city, "2h"), city)
    opened = waves(level(engine, city, UP, T0, 214.0))
    assert set(opened) == {"river-zj-0003", "river-zj-0002"}  # 77 and 116 min; km 34 is 181


def test_the_most_downstream_station_warns_nobody(city: Registry) -> None:
    engine = Engine(rules(city), city)
    assert waves(level(engine, city, "river-zj-0006", T0, 207.0)) == {}


def test_it_clears_once_upstream_has_cleared_and_the_wave_is_past(city: Registry) -> None:
    engine = Engine(rules(city), city)
    level(engine, city, UP, T0, 214.0)
    cleared = level(engine, city, UP, T0 + 30 * MINUTE, 212.0)
    assert waves(cleared, "clear") == {}  # upstream is down, but the water is still coming
    arrival = T0 + round(TRAVEL_MIN["river-zj-0003"] * MINUTE)
    assert waves(engine.tick(arrival + HOUR - 1), "clear") == {}
    done = waves(engine.tick(arrival + HOUR), "clear")
    assert set(done) == {"river-zj-0003"}
    assert done["river-zj-0003"].ts_ms == arrival + HOUR
    later = waves(engine.tick(T0 + 12 * HOUR), "clear")
    assert set(later) == set(TRAVEL_MIN) - {"river-zj-0003"}


def test_while_upstream_holds_it_stays_open(city: Registry) -> None:
    engine = Engine(rules(city), city)
    level(engine, city, UP, T0, 214.0)
    assert waves(engine.tick(T0 + 24 * HOUR), "clear") == {}


def test_a_person_resolving_upstream_lets_downstream_clear(city: Registry) -> None:
    engine = Engine(rules(city), city)
    level(engine, city, UP, T0, 214.0)
    assert engine.resolve("over_warning", UP, T0 + MINUTE, resolved_ts=T0 + MINUTE)
    done = waves(engine.tick(T0 + 12 * HOUR), "clear")
    assert set(done) == set(TRAVEL_MIN)


def test_a_resolved_downstream_warning_reopens_on_the_next_wave(city: Registry) -> None:
    engine = Engine(rules(city), city)
    level(engine, city, UP, T0, 214.0)
    assert engine.resolve("wave", "river-zj-0003", T0 + MINUTE, resolved_ts=T0 + MINUTE)
    level(engine, city, UP, T0 + 2 * MINUTE, 212.0)
    again = waves(level(engine, city, UP, T0 + 3 * MINUTE, 214.5))
    assert "river-zj-0003" in again


def test_a_restart_goes_on_from_the_snapshot(city: Registry) -> None:
    engine = Engine(rules(city), city)
    level(engine, city, UP, T0, 214.0)
    level(engine, city, UP, T0 + 30 * MINUTE, 212.0)
    again = Engine.restore(rules(city), city, engine.snapshot())
    assert again.is_open("wave", "river-zj-0006")
    done = waves(again.tick(T0 + 12 * HOUR), "clear")
    assert set(done) == set(TRAVEL_MIN)


def test_checks_name_what_it_cannot_follow(city: Registry) -> None:
    bad = RULES.replace("{within}", "8h").replace("after: [over_warning]", "after: [nothing]")
    with pytest.raises(RulesError) as e:
        parse_rules(yaml.safe_load(bad), "t.yaml", city)
    assert "after.0: no rule 'nothing' in this file" in str(e.value)
    road = RULES.replace("{within}", "8h").replace(
        "kinds: [river]\n  after", "kinds: [road]\n  after"
    )
    with pytest.raises(RulesError) as e:
        parse_rules(yaml.safe_load(road), "t.yaml", city)
    assert "along_river follows rivers" in str(e.value)


def accident(engine: Engine, city: Registry, camera: str, ts: int) -> list[Transition]:
    device = city.devices[camera]
    return engine.observe(device, Channel.EVENT, road_event(ts, "accident"), ts)


def test_three_reports_on_one_segment_are_one_incident(city: Registry) -> None:
    engine = Engine(rules(city), city)
    # g320-sq has road-sq-0001 (km 4) and road-sq-0002 (km 11); road-sq-0003 is on X017.
    first = accident(engine, city, "road-sq-0002", T0)
    second = accident(engine, city, "road-sq-0001", T0 + 5_000)
    third = accident(engine, city, "road-sq-0002", T0 + 9_000)
    other = accident(engine, city, "road-sq-0003", T0 + 10_000)
    assert [(t.device_id, t.action) for t in first] == [("road-sq-0001", "open")]
    assert [(t.device_id, t.action) for t in second + third] == [
        ("road-sq-0001", "update"),
        ("road-sq-0001", "update"),
    ]
    assert third[0].detail.endswith("reported by road-sq-0002, road-sq-0001")
    assert [(t.device_id, t.action) for t in other] == [("road-sq-0003", "open")]
    assert engine.resolve("accident", "road-sq-0001", T0 + MINUTE, resolved_ts=T0 + MINUTE)
    anew = accident(engine, city, "road-sq-0001", T0 + 2 * MINUTE)
    assert [(t.device_id, t.action) for t in anew] == [("road-sq-0001", "open")]
    assert anew[0].detail.endswith("reported by road-sq-0001")


def test_a_restore_under_a_shorter_reach_or_another_trigger_lets_it_clear(city: Registry) -> None:
    engine = Engine(rules(city), city)
    level(engine, city, UP, T0, 214.0)
    snapshot = engine.snapshot()
    # within cut to 2 h: river-zj-0006 (372 min away) is no longer told of UP's clear.
    shorter = Engine.restore(rules(city, "2h"), city, snapshot)
    assert waves(shorter.tick(T0 + 10 * HOUR), "clear").keys() >= {"river-zj-0006"}
    # The followed rule gone from the file: its conditions are the caller's to resolve, and
    # what followed them clears rather than waiting for a clear that never comes.
    text = RULES.replace("{within}", "8h").replace("after: [over_warning]", "after: [gone]")
    text = text.replace("- id: over_warning", "- id: gone")
    moved = Engine.restore(parse_rules(yaml.safe_load(text), "t.yaml", city), city, snapshot)
    assert ("over_warning", UP) in moved.dropped_open
    assert set(waves(moved.tick(T0 + 10 * HOUR), "clear")) == set(TRAVEL_MIN)


def test_per_segment_holds_a_segment_only_under_its_lead(city: Registry) -> None:
    # A per-device alert on a camera that is not its segment's lead (rules before per:
    # segment) is not the engine's to hold: refused to adopt, dropped (for the caller to
    # resolve as rule_changed) on restore — never a second state that splits an incident.
    engine = Engine(rules(city), city)
    assert not engine.adopt("accident", "road-sq-0002", T0)
    assert engine.adopt("accident", "road-sq-0001", T0)
    snapshot = engine.snapshot()
    snapshot["rules"]["accident"]["states"]["road-sq-0002"] = snapshot["rules"]["accident"][
        "states"
    ]["road-sq-0001"]
    again = Engine.restore(rules(city), city, snapshot)
    assert ("accident", "road-sq-0002") in again.dropped_open
    assert again.open_conditions() == [("accident", "road-sq-0001")]


def test_a_broken_along_state_is_dropped_not_the_whole_snapshot(city: Registry) -> None:
    engine = Engine(rules(city), city)
    level(engine, city, UP, T0, 214.0)
    snapshot = engine.snapshot()
    snapshot["rules"]["wave"]["states"]["river-zj-0003"]["sources"] = {"x": [1]}
    again = Engine.restore(rules(city), city, snapshot)
    assert any("river-zj-0003" in p for p in again.restore_problems)
    assert again.is_open("wave", "river-zj-0006") and again.is_open("over_warning", UP)
