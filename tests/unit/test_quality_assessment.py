"""Issue 18: a station's water judged as GB 3838-2002 assessment does it — each parameter's
newest value while it is valid, against the section's own target class — not message by message.

Every class below is worked out by hand from Table 1 (river limits, mg/L):

    class      I     II    III   IV    V         (worse: 劣Ⅴ)
    DO  ≥     7.5   6     5     3     2
    CODMn ≤   2     4     6     10    15
    NH3-N ≤   0.15  0.5   1.0   1.5   2.0
    TP  ≤     0.02  0.1   0.2   0.3   0.4
    pH        6-9 for every class
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from devices.registry import Registry, RegistryError, parse_registry, water_class_name
from rules.engine import Engine
from rules.loader import parse_rules
from rules.model import ValidFor, WaterQualityRule
from rules.problems import RulesError
from rules.waterquality import FIELDS, WaterClass
from tests.unit.smallcity import SMALL_AREAS
from tests.unit.test_rules_support import (
    DEVICES,
    HOUR,
    MINUTE,
    T0,
    Feeder,
    actions,
    base,
    river,
    ruleset,
)

AGAINST_III = base("wq", "water_quality", "river") + "  worse_than: III\n"
AGAINST_TARGET = base("wq", "water_quality", "river") + "  worse_than: target\n"
# Class II on every parameter: pH in 6-9, DO 6.5 ≥ 6, CODMn 3.5 ≤ 4, NH3-N 0.4 ≤ 0.5, TP 0.08 ≤ 0.1.
CLASS_II = {"ph": 7.5, "do_mgl": 6.5, "codmn_mgl": 3.5, "nh3n_mgl": 0.4, "tp_mgl": 0.08}
PROBES = {"ph": 7.3, "do_mgl": 7.8}  # what the pH/DO probes send every few minutes: class I
ANALYSERS = ("codmn_mgl", "nh3n_mgl", "tp_mgl")  # on cycles of hours


def targets(**by_device: str) -> Registry:
    """The small city with target classes on its river stations (r1, r2)."""
    devices = [
        {**d, "target_class": by_device[d["id"]]} if d["id"] in by_device else d for d in DEVICES
    ]
    return parse_registry({"areas": SMALL_AREAS, "devices": devices}, "city.yaml")


def test_a_probe_sample_does_not_clear_what_an_analyser_opened() -> None:
    """NH3-N 1.8 (1.5 < 1.8 ≤ 2.0: class V) opens; the pH+DO samples after it are class I, but
    the NH3-N value is valid for 6 h: the station is still class V and nothing clears."""
    feed = Feeder(ruleset(AGAINST_III))
    [opened] = feed("r1", river(T0, **{**CLASS_II, "nh3n_mgl": 1.8}))
    assert (opened.action, opened.value) == ("open", "V")
    assert opened.detail == "class V: NH3-N 1.8 mg/L class V (worse than class III)"
    for minutes in range(5, 6 * 60, 5):  # the probes every 5 minutes, up to 6 h
        assert feed("r1", river(T0 + minutes * MINUTE, **PROBES)) == []
    # The analyser's next NH3-N: 0.8 (0.5 < 0.8 ≤ 1.0: class III). CODMn and TP (class II) were
    # measured at T0, more than 6 h ago, and no longer count: class III, at the limit, clears.
    [cleared] = feed("r1", river(T0 + 6 * HOUR + 10 * MINUTE, **PROBES, nh3n_mgl=0.8))
    assert (cleared.action, cleared.value) == ("clear", "III")
    assert cleared.detail == "back to class III (at or better than class III)"


def test_the_class_is_the_worst_over_every_valid_parameter_whichever_message_carried_it() -> None:
    feed = Feeder(ruleset(AGAINST_III))
    assert feed("r1", river(T0, **PROBES)) == []
    # The analysers alone: NH3-N 1.2 (1.0 < 1.2 ≤ 1.5: IV), CODMn 3 (II), TP 0.15 (III).
    [opened] = feed("r1", river(T0 + MINUTE, codmn_mgl=3.0, nh3n_mgl=1.2, tp_mgl=0.15))
    assert (opened.action, opened.value) == ("open", "IV")
    # Then DO 2.5 (2 ≤ 2.5 < 3: class V) with the NH3-N still valid: V, naming both.
    [worse] = feed("r1", river(T0 + 6 * MINUTE, ph=7.3, do_mgl=2.5))
    assert (worse.action, worse.value) == ("update", "V")
    assert worse.detail == (
        "class V: DO 2.5 mg/L class V; NH3-N 1.2 mg/L class IV (worse than class III)"
    )
    # DO back to 7.8: NH3-N still IV, nothing (not worse than the episode's worst either).
    assert feed("r1", river(T0 + 11 * MINUTE, **PROBES)) == []


def test_a_station_judged_against_its_target_class() -> None:
    """r1's section has target class II, r2's class IV; the same samples, told apart."""
    feed = Feeder(ruleset(AGAINST_TARGET, targets(r1="II", r2="IV")), targets(r1="II", r2="IV"))
    # NH3-N 0.6 (0.5 < 0.6 ≤ 1.0): class III — worse than II, well within IV.
    sample = {**CLASS_II, "nh3n_mgl": 0.6}
    [opened] = feed("r1", river(T0, **sample))
    assert (opened.action, opened.value) == ("open", "III")
    assert opened.detail == "class III: NH3-N 0.6 mg/L class III (worse than target class II)"
    assert feed("r2", river(T0, **sample)) == []
    # Back to NH3-N 0.4 (≤ 0.5): class II, the target: clears.
    [cleared] = feed("r1", river(T0 + 5 * MINUTE, **CLASS_II))
    assert (cleared.action, cleared.value) == ("clear", "II")
    assert cleared.detail == "back to class II (at or better than target class II)"
    # A spill: NH3-N 2.3 (> 2.0: 劣Ⅴ), TP 0.35 (0.3 < 0.35 ≤ 0.4: V), CODMn 5 (4 < 5 ≤ 6: III).
    spill = {**CLASS_II, "nh3n_mgl": 2.3, "tp_mgl": 0.35, "codmn_mgl": 5.0}
    [again] = feed("r1", river(T0 + 10 * MINUTE, **spill))
    assert (again.action, again.value) == ("open", "劣Ⅴ")
    assert again.detail == (
        "worse than class V: NH3-N 2.3 mg/L class 劣Ⅴ; TP 0.35 mg/L class V; "
        "CODMn 5 mg/L class III (worse than target class II)"
    )
    # Against IV, only what is worse than IV is named.
    [r2] = feed("r2", river(T0 + 10 * MINUTE, **spill))
    assert r2.detail == (
        "worse than class V: NH3-N 2.3 mg/L class 劣Ⅴ; TP 0.35 mg/L class V "
        "(worse than target class IV)"
    )


def test_a_station_without_a_target_is_judged_against_the_default() -> None:
    """r2 has no target_class (a registry written before targets): default_target III."""
    registry = targets(r1="II")
    feed = Feeder(ruleset(AGAINST_TARGET + "  default_target: III\n", registry), registry)
    sample = {**CLASS_II, "tp_mgl": 0.15}  # TP 0.1 < 0.15 ≤ 0.2: class III
    assert actions(feed("r1", river(T0, **sample))) == [("open", "water_quality")]
    assert feed("r2", river(T0, **sample)) == []
    [opened] = feed("r2", river(T0 + MINUTE, **{**sample, "tp_mgl": 0.25}))  # 0.2 < 0.25: IV
    assert opened.detail == "class IV: TP 0.25 mg/L class IV (worse than target class III)"


def test_an_expired_bad_value_holds_the_alert_until_a_newer_value_replaces_it() -> None:
    """The NH3-N analyser stops after a class V reading. Its value expires after 6 h, but an
    alarm must not vanish because an analyser stopped: it is held, and said to be old."""
    feed = Feeder(ruleset(AGAINST_III))
    assert actions(feed("r1", river(T0, **{**CLASS_II, "nh3n_mgl": 1.8}))) == [
        ("open", "water_quality")
    ]
    for minutes in range(30, 12 * 60, 30):  # half a day of probe samples, class I
        assert feed("r1", river(T0 + minutes * MINUTE, **PROBES)) == []
    assert feed.engine.is_open("wq", "r1")
    assert feed.tick(T0 + 13 * HOUR) == []  # time alone changes nothing either
    # DO 1.5 (< 2: 劣Ⅴ) is worse than the episode's V: an update naming the held NH3-N too.
    [worse] = feed("r1", river(T0 + 12 * HOUR + 20 * MINUTE, ph=7.3, do_mgl=1.5))
    assert worse.detail == (
        "worse than class V: DO 1.5 mg/L class 劣Ⅴ; "
        "NH3-N 1.8 mg/L class V (12h20m old, no newer value) (worse than class III)"
    )
    assert feed("r1", river(T0 + 12 * HOUR + 25 * MINUTE, **PROBES)) == []  # still NH3-N
    # The analyser is back: NH3-N 0.3 (II). Valid now: pH, DO (I) and NH3-N (II): class II.
    [cleared] = feed("r1", river(T0 + 13 * HOUR, nh3n_mgl=0.3))
    assert (cleared.action, cleared.value) == ("clear", "II")


def test_expired_or_resolved_values_open_nothing() -> None:
    feed = Feeder(ruleset(AGAINST_III))
    assert actions(feed("r1", river(T0, **{**CLASS_II, "nh3n_mgl": 1.8}))) == [
        ("open", "water_quality")
    ]
    assert feed.engine.resolve("wq", "r1", T0 + MINUTE)
    # The NH3-N of before the resolve is the resolved alert's: the probes reopen nothing, while
    # it is valid or after it expired.
    assert feed("r1", river(T0 + 10 * MINUTE, **PROBES)) == []
    assert feed("r1", river(T0 + 7 * HOUR, **PROBES)) == []
    # A new NH3-N reading that is still class V opens a new alert.
    [reopened] = feed("r1", river(T0 + 8 * HOUR, nh3n_mgl=1.7))
    assert (reopened.action, reopened.value) == ("open", "V")


def test_a_late_analyser_value_is_recorded_and_judged_with_the_next_sample() -> None:
    feed = Feeder(ruleset(AGAINST_III))
    assert feed("r1", river(T0, **CLASS_II)) == []
    assert feed("r1", river(T0 + 10 * MINUTE, **PROBES)) == []
    # Stamped before the newest sample: not judged (late samples never transition) ...
    assert feed("r1", river(T0 + 8 * MINUTE, nh3n_mgl=1.8)) == []
    # ... but newer than the NH3-N on record (T0), so the next sample is judged with it.
    assert actions(feed("r1", river(T0 + 15 * MINUTE, **PROBES))) == [("open", "water_quality")]


def test_the_assessment_survives_a_restart() -> None:
    feed = Feeder(ruleset(AGAINST_III))
    feed("r1", river(T0, **{**CLASS_II, "nh3n_mgl": 1.8}))
    state = feed.engine.snapshot()["rules"]["wq"]["states"]["r1"]
    assert state["values"]["nh3n_mgl"] == 1.8 and state["measured"]["nh3n_mgl"] == T0
    again = feed.restarted()
    assert again("r1", river(T0 + 5 * MINUTE, **PROBES)) == []
    assert again.engine.is_open("wq", "r1")


def _old_snapshot(feed: Feeder) -> dict[str, Any]:
    """The engine's snapshot as a version before issue 18 wrote it (no parameter values)."""
    snapshot: dict[str, Any] = json.loads(json.dumps(feed.engine.snapshot()))
    for state in snapshot["rules"]["wq"]["states"].values():
        for name in ("values", "measured", "pending"):
            del state[name]
    return snapshot


def test_an_old_snapshot_loads_and_its_open_alert_waits_for_every_parameter() -> None:
    """Restored from a snapshot without values, an open alert's cause is unknown: a probe
    sample must not clear it (the bug this issue fixes, at the upgrade); a sample of every
    parameter at or better than the class does."""
    rules = ruleset(AGAINST_III)
    feed = Feeder(rules)
    feed("r1", river(T0, **{**CLASS_II, "nh3n_mgl": 1.8}))
    restored = Feeder(rules)
    restored.engine = Engine.restore(rules, restored.registry, _old_snapshot(feed))
    assert restored.engine.is_open("wq", "r1")
    assert restored("r1", river(T0 + 5 * MINUTE, **PROBES)) == []
    assert restored("r1", river(T0 + 10 * MINUTE, codmn_mgl=3.0, tp_mgl=0.08)) == []
    assert actions(restored("r1", river(T0 + 15 * MINUTE, nh3n_mgl=0.4))) == [("clear", "cleared")]
    # A closed condition from an old snapshot just starts its record afresh.
    assert restored("r1", river(T0 + 20 * MINUTE, **PROBES)) == []


def test_an_alert_adopted_from_the_store_waits_for_every_parameter() -> None:
    feed = Feeder(ruleset(AGAINST_III))
    assert feed.engine.adopt("wq", "r1", T0)
    assert feed("r1", river(T0 + MINUTE, **PROBES)) == []
    assert actions(feed("r1", river(T0 + 2 * MINUTE, **CLASS_II))) == [("clear", "cleared")]


def test_a_resolve_ends_the_wait_of_an_alert_of_unknown_cause() -> None:
    feed = Feeder(ruleset(AGAINST_III))
    assert feed.engine.adopt("wq", "r1", T0)
    assert feed("r1", river(T0 + MINUTE, **PROBES)) == []  # waits for the analysers
    assert feed.engine.resolve("wq", "r1", T0 + 2 * MINUTE)
    # A new episode, of known cause: the NH3-N that opened it is all it waits for.
    assert actions(feed("r1", river(T0 + 3 * MINUTE, nh3n_mgl=1.8))) == [("open", "water_quality")]
    assert actions(feed("r1", river(T0 + 4 * MINUTE, nh3n_mgl=0.4))) == [("clear", "cleared")]


@pytest.mark.parametrize(
    "spelling", ["I", "II", "Ⅱ", "ii", "2", 3, "IV类", "class V", " Ⅴ ", "Ⅲ类"]
)
def test_registry_and_rules_read_a_class_alike(spelling: Any) -> None:
    text = str(spelling)
    assert water_class_name(spelling) == WaterClass.parse(text).name


def test_a_bad_target_class_is_a_named_error() -> None:
    with pytest.raises(RegistryError) as raised:
        targets(r1="VI")
    [problem] = [str(p) for p in raised.value.problems]
    assert problem.startswith("city.yaml: devices[0] (id=r1): target_class: ")
    assert "'VI' is not a water class of GB 3838-2002 (I, II, III, IV or V)" in problem
    with pytest.raises(RegistryError, match="target_class"):
        targets(r1="劣Ⅴ")  # a target is a class to meet, not 劣Ⅴ


def _problems(text: str, registry: Registry) -> list[str]:
    with pytest.raises(RulesError) as raised:
        parse_rules({"rules": yaml.safe_load(text)}, "rules.yaml", registry)
    return [str(p) for p in raised.value.problems]


def test_rule_checks_for_targets_and_windows() -> None:
    only_r1 = targets(r1="II")
    assert _problems(AGAINST_TARGET, only_r1) == [
        "rules.yaml: rules[0] (id=wq): worse_than: device r2 has no target_class "
        "(or give default_target)"
    ]
    # Judged against targets only where the rule looks: r1 alone is fine.
    assert ruleset(AGAINST_TARGET + "  devices: [r1]\n", only_r1)
    assert _problems(AGAINST_III + "  default_target: II\n", only_r1) == [
        "rules.yaml: rules[0] (id=wq): default_target: applies only with worse_than: target"
    ]
    assert _problems(AGAINST_TARGET + "  default_target: 劣Ⅴ\n", only_r1) == [
        "rules.yaml: rules[0] (id=wq): default_target: "
        "a target is a class to meet: I, II, III, IV or V"
    ]
    zero = AGAINST_III + "  valid_for: {ph: 0s}\n"
    assert _problems(zero, only_r1) == [
        "rules.yaml: rules[0] (id=wq): valid_for.ph: must be longer than 0s"
    ]
    unknown = AGAINST_III + "  valid_for: {cod_mgl: 1h}\n"
    assert "valid_for.cod_mgl" in _problems(unknown, only_r1)[0]


def test_valid_for_covers_the_table_with_the_documented_defaults() -> None:
    defaults = ValidFor()
    assert tuple(ValidFor.model_fields) == FIELDS
    assert [defaults.window(f) // HOUR for f in FIELDS] == [2, 2, 6, 6, 6]
    custom = ruleset(AGAINST_III + "  valid_for: {nh3n_mgl: 12h}\n")[0]
    assert isinstance(custom, WaterQualityRule)
    assert custom.valid_for.window("nh3n_mgl") == 12 * HOUR
    assert custom.valid_for.window("tp_mgl") == 6 * HOUR
