"""Rule files: the example loads against the example city; bad ones name file, rule and field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from devices.registry import load_registry
from rules.durations import format_duration, parse_duration
from rules.loader import load_rules, parse_rules
from rules.model import EventCountRule, Severity, SilenceRule, ThresholdRule
from rules.problems import RulesError
from tests.unit.test_rules_support import base, city

ROOT = Path(__file__).resolve().parents[2]


def test_default_rules_load_against_the_example_city() -> None:
    registry = load_registry(ROOT / "config" / "registry.yaml")
    rules = load_rules(ROOT / "config" / "rules.yaml", registry)
    ids = {r.id for r in rules}
    assert {
        "river_over_warning",
        "river_over_guarantee",
        "river_rising_fast",
        "water_quality_worse_than_target",
        "gate_forced_open",
        "gate_held_open",
        "gate_tailgating_burst",
        "road_accident",
        "road_wrong_way",
        "road_congestion_sustained",
        "road_congestion_reported",
        "road_speeding_burst",
        "device_silent",
    } <= ids
    for rule in rules:
        assert rule.name and rule.name_zh and rule.escalate_after
        if rule.severity is Severity.CRITICAL:
            assert rule.escalate_after <= 5 * 60_000
    warning = rules.get("river_over_warning")
    assert isinstance(warning, ThresholdRule)
    assert warning.for_ == 120_000 and warning.clear_condition.offset == -0.1
    tailgating = rules.get("gate_tailgating_burst")
    assert isinstance(tailgating, EventCountRule) and tailgating.count == 3
    silent = rules.get("device_silent")
    assert isinstance(silent, SilenceRule) and silent.k == 3
    # The JSON form reads like the file (durations and classes as written), and reloads.
    dumped = rules.dump()
    assert next(d for d in dumped if d["id"] == "river_over_warning")["for"] == "2m"
    assert next(d for d in dumped if d["type"] == "water_quality")["worse_than"] == "target"
    again = parse_rules({"rules": dumped}, "dumped", registry)
    assert again.dump() == dumped
    quality = rules.get("water_quality_worse_than_target")
    assert quality is not None and getattr(quality, "worse_than", None) == "target"


def problems(text: str, with_registry: bool = True) -> list[str]:
    with pytest.raises(RulesError) as raised:
        parse_rules(yaml.safe_load(text), "rules.yaml", city() if with_registry else None)
    return [str(p) for p in raised.value.problems]


THRESHOLD = base("high", "threshold", "river") + "  field: water_level_m\n  op: '>'\n"


def test_errors_name_file_rule_and_field() -> None:
    found = problems(
        "rules:\n"
        + THRESHOLD
        + "  attribute: warning_level_m\n  for: 2\n"
        + base("ok", "event", "gate")
        + "  events: [forced_open]\n"
        + base("bad event", "event", "gate")
        + "  events: [forced_open]\n  clear_after: soon\n"
    )
    assert found == [
        "rules.yaml: rules[0] (id=high): for: Value error, a duration is a string with a unit "
        "such as '30s', '10m' or '1h', not 2",
        "rules.yaml: rules[2] (id=bad event): id: String should match pattern "
        "'^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$'",
        "rules.yaml: rules[2] (id=bad event): clear_after: Value error, 'soon' is not a duration "
        "such as '30s', '10m', '1h30m' or '500ms'",
    ]


def test_unknown_keys_types_and_forms() -> None:
    found = problems(
        "rules:\n"
        + THRESHOLD
        + "  value: '3'\n  colour: red\n"
        + "- {id: x, type: magic}\n"
        + "- {id: y}\n"
        + "- 42\n"
        + "extra: 1\n"
    )
    assert "rules.yaml: (top): extra: unknown section; a rule file has only `rules`" in found
    assert "rules.yaml: rules[0] (id=high): value: Input should be a valid number" in found
    assert "rules.yaml: rules[0] (id=high): colour: Extra inputs are not permitted" in found
    assert any(p.startswith("rules.yaml: rules[1] (id=x): type: Input tag 'magic'") for p in found)
    assert any(
        p.startswith("rules.yaml: rules[2] (id=y): type: Unable to extract tag") for p in found
    )
    assert "rules.yaml: rules[3]: type: a rule must be a mapping" in found


def test_cross_checks_against_schemas_and_registry() -> None:
    found = problems(
        "rules:\n"
        # A field the kind's telemetry does not have, an attribute the kind has not.
        + base("a", "threshold", "river, road")
        + "  field: water_level_m\n  op: '>'\n  attribute: warning_level_m\n"
        # An event the kind does not publish; a kind without events.
        + base("b", "event", "gate, river")
        + "  events: [forced_open, accident]\n"
        # A device not in the registry, and one of another kind.
        + base("c", "event_count", "gate")
        + "  events: [tailgating]\n  count: 3\n  window: 10m\n  devices: [g1, nope, r1]\n"
        # The same id twice.
        + base("a", "silence", "gate")
        + "  channels: [water_level_m]\n"
    )
    assert found == [
        "rules.yaml: rules[0] (id=a): field: a road telemetry has no numeric field "
        "'water_level_m' (it has: avg_speed_kmh, occupancy_pct, queue_length_m, vehicle_count)",
        "rules.yaml: rules[0] (id=a): attribute: a road device has no numeric attribute "
        "'warning_level_m' (it has: km, lanes, report_interval_s, speed_limit_kmh)",
        "rules.yaml: rules[1] (id=b): events.1: a gate has no event 'accident' "
        "(it has: denied, forced_open, held_open, pass, tailgating, visitor)",
        "rules.yaml: rules[1] (id=b): kinds: a river device publishes no events",
        "rules.yaml: rules[2] (id=c): devices.1: no device 'nope' in the registry",
        "rules.yaml: rules[2] (id=c): devices.2: r1 is a river; the rule is for gate",
        "rules.yaml: rules[3] (id=a): id: duplicate rule id (first at rules[0])",
        "rules.yaml: rules[3] (id=a): channels.0: no gate telemetry has a field 'water_level_m'",
    ]


def test_threshold_needs_one_reference_and_a_clear_on_the_other_side() -> None:
    found = problems(
        "rules:\n"
        + THRESHOLD.replace("high", "neither")
        + THRESHOLD.replace("high", "both")
        + "  value: 1\n  attribute: warning_level_m\n"
        + THRESHOLD.replace("high", "same_side")
        + "  value: 212\n  clear: {op: '>', value: 211}\n"
        + THRESHOLD.replace("high", "overlap")
        + "  value: 212\n  clear: {op: '<', value: 213}\n"
        + THRESHOLD.replace("high", "overlap_attr")
        + "  attribute: warning_level_m\n  clear: {op: '<', attribute: warning_level_m, "
        "offset: 0.2}\n"
        + THRESHOLD.replace("high", "overlap_device")
        + "  value: 211.8\n  clear: {op: '<', attribute: warning_level_m}\n"
        + THRESHOLD.replace("high", "offset_value")
        + "  value: 1\n  offset: 2\n"
    )
    assert found == [
        "rules.yaml: rules[0] (id=neither): value: give a value or a device attribute, not neither",
        "rules.yaml: rules[1] (id=both): value: give a value or a device attribute, not both",
        "rules.yaml: rules[2] (id=same_side): clear.op: a rule that opens on > must clear on the "
        "other side",
        "rules.yaml: rules[3] (id=overlap): clear: the clear condition overlaps the trigger",
        "rules.yaml: rules[4] (id=overlap_attr): clear: the clear condition overlaps the trigger",
        "rules.yaml: rules[5] (id=overlap_device): clear: for r2 the clear condition overlaps the "
        "trigger",
        "rules.yaml: rules[6] (id=offset_value): offset: an offset applies to an attribute; fold "
        "it into value",
    ]


def test_other_forms_checks() -> None:
    found = problems(
        "rules:\n"
        + base("rate", "rate_of_change", "river")
        + "  field: water_level_m\n  per: 1h\n  window: 10m\n  min_span: 20m\n"
        + "  clear_below: 1\n  rise: 0.5\n  fall: 0.5\n"
        + base("wq", "water_quality", "river, gate")
        + "  worse_than: 劣Ⅴ\n"
        + base("wq2", "water_quality", "river")
        + "  worse_than: VII\n"
        + base("flap", "event", "gate")
        + "  events: [held_open, held_open]\n  flap: {max_transitions: 1, window: 1h}\n"
    )
    assert found == [
        "rules.yaml: rules[0] (id=rate): rise: give rise or fall, not both",
        "rules.yaml: rules[0] (id=rate): min_span: is longer than the window",
        "rules.yaml: rules[0] (id=rate): clear_below: must be below the opening rate 0.5",
        "rules.yaml: rules[1] (id=wq): worse_than: nothing is worse than 劣Ⅴ; "
        "use V to alert on 劣Ⅴ",
        "rules.yaml: rules[1] (id=wq): kinds: a gate telemetry has no ph, do_mgl, codmn_mgl, "
        "nh3n_mgl, tp_mgl",
        "rules.yaml: rules[2] (id=wq2): worse_than: Value error, 'VII' is not a water class "
        "(I, II, III, IV, V or 劣Ⅴ)",
        "rules.yaml: rules[3] (id=flap): flap.max_transitions: Input should be greater than or "
        "equal to 2",
    ]


def test_attribute_missing_on_a_registry_device_is_checked_only_with_a_registry() -> None:
    text = "rules:\n" + THRESHOLD + "  attribute: warning_level_m\n  devices: [r9]\n"
    assert problems(text) == [
        "rules.yaml: rules[0] (id=high): devices.0: no device 'r9' in the registry"
    ]
    assert len(parse_rules(yaml.safe_load(text), "rules.yaml", None)) == 1


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(RulesError, match=r"nowhere.yaml: \(file\): \(read\)"):
        load_rules(tmp_path / "nowhere.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("rules: [\n", encoding="utf-8")
    with pytest.raises(RulesError, match=r"broken.yaml: \(file\): \(yaml\)"):
        load_rules(broken)
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n", encoding="utf-8")
    with pytest.raises(RulesError, match=r"list.yaml: \(top\): \(file\): must be a mapping"):
        load_rules(listed)
    empty = tmp_path / "empty.yaml"
    empty.write_text("rules:\n", encoding="utf-8")
    with pytest.raises(RulesError, match=r"\(top\): rules: must be a list"):
        load_rules(empty)


def test_yaml_tags_that_build_objects_are_refused(tmp_path: Path) -> None:
    evil = tmp_path / "evil.yaml"
    evil.write_text("rules: !!python/object/apply:os.system ['true']\n", encoding="utf-8")
    with pytest.raises(RulesError, match=r"\(yaml\)"):
        load_rules(evil)


def test_durations() -> None:
    assert parse_duration("1h30m") == 5_400_000
    assert parse_duration("500ms") == 500
    assert parse_duration("1.5s") == 1500
    assert parse_duration("2d") == 172_800_000
    assert format_duration(5_400_000) == "1h30m"
    assert format_duration(61_001) == "1m1s1ms"
    assert format_duration(0) == "0s"
    for bad in ("", "10", "m", "10 minutes", "-1s", "1y", 30, None, True):
        with pytest.raises(ValueError):
            parse_duration(bad)
    with pytest.raises(ValueError, match="longer than a year"):
        parse_duration("400d")
