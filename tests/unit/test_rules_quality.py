"""Water-quality rule: opens worse than the class, updates only when worse still, clears back."""

from __future__ import annotations

from tests.unit.test_rules_support import MINUTE, T0, Feeder, actions, base, river, ruleset

RULE = base("wq", "water_quality", "river") + "  worse_than: III\n"
GOOD = {"ph": 7.4, "do_mgl": 6.8, "codmn_mgl": 3.0, "nh3n_mgl": 0.4, "tp_mgl": 0.1}  # class II


def test_opens_worse_than_iii_and_clears_at_iii() -> None:
    feed = Feeder(ruleset(RULE))
    assert feed("r1", river(T0, **GOOD)) == []
    assert feed("r1", river(T0 + MINUTE, **{**GOOD, "nh3n_mgl": 1.0})) == []  # III: at the limit
    [opened] = feed("r1", river(T0 + 2 * MINUTE, **{**GOOD, "nh3n_mgl": 1.01}))
    assert (opened.action, opened.value, opened.reason.value) == ("open", "IV", "water_quality")
    assert opened.detail == "class IV: NH3-N 1.01 mg/L class IV (worse than class III)"
    # Worse still: one update; the same or a better bad class: nothing.
    [worse] = feed("r1", river(T0 + 3 * MINUTE, **{**GOOD, "tp_mgl": 0.9, "do_mgl": 1.0}))
    assert (worse.action, worse.value) == ("update", "劣Ⅴ")
    assert worse.detail == (
        "worse than class V: DO 1 mg/L class 劣Ⅴ; TP 0.9 mg/L class 劣Ⅴ (worse than class III)"
    )
    assert feed("r1", river(T0 + 4 * MINUTE, **{**GOOD, "tp_mgl": 0.9})) == []
    assert feed("r1", river(T0 + 5 * MINUTE, **{**GOOD, "tp_mgl": 0.25})) == []
    [cleared] = feed("r1", river(T0 + 6 * MINUTE, **{**GOOD, "tp_mgl": 0.2}))
    assert (cleared.action, cleared.value) == ("clear", "III")
    assert cleared.detail == "back to class III (at or better than class III)"


def test_samples_without_quality_parameters_and_late_samples_change_nothing() -> None:
    feed = Feeder(ruleset(RULE))
    assert actions(feed("r1", river(T0 + 10 * MINUTE, ph=5.5))) == [("open", "water_quality")]
    assert feed("r1", river(T0 + 11 * MINUTE, water_level_m=210.0)) == []
    assert feed("r1", river(T0 + 9 * MINUTE, **GOOD)) == []  # late and good: not a clear
    assert actions(feed("r1", river(T0 + 12 * MINUTE, **GOOD))) == [("clear", "cleared")]
