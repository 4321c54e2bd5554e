"""What the engine works out once instead of per message, and why it cannot go stale.

- ``Engine._observers``: each route's rules with their state dicts bound at construction. Rules
  and evaluators are fixed for an engine's life (new rules mean a new engine, ``Engine.restore``),
  and the state dicts are never replaced, only filled (by ``observe``, ``restore``, arming).
- ``SilenceEvaluator._limits``: keyed by the ``report_interval_s`` number itself, not by device,
  so a device replaced by one with another interval (a reloaded registry) gets its own limit.
- ``ThresholdEvaluator``'s operators: taken from the rule once; they must agree with ``compare``.
"""

from __future__ import annotations

import itertools

import pytest

from devices.kinds import Channel
from rules.evaluator import compare
from rules.threshold import ThresholdEvaluator
from tests.unit.test_rules_support import (
    SECOND,
    T0,
    Feeder,
    actions,
    base,
    gate_telemetry,
    river,
    ruleset,
)

SILENCE = base("silent", "silence", "gate, river")


def test_silence_limits_follow_each_devices_interval() -> None:
    feed = Feeder(ruleset(SILENCE))
    feed("r1", river(T0, water_level_m=210.0))  # every 60 s: silent after 180 s
    feed("r2", river(T0, water_level_m=210.0))  # every 300 s: silent after 900 s
    [r1] = feed.tick(T0 + 180 * SECOND)
    assert (r1.device_id, r1.ts_ms) == ("r1", T0 + 180 * SECOND)
    assert feed.tick(T0 + 900 * SECOND - 1) == []
    [r2] = feed.tick(T0 + 900 * SECOND)
    assert (r2.device_id, r2.ts_ms) == ("r2", T0 + 900 * SECOND)


def test_a_device_with_a_new_interval_gets_a_new_limit() -> None:
    # Devices do not change while an engine runs, but a reloaded registry would bring new
    # device objects under the same ids: the limit must be the new object's.
    feed = Feeder(ruleset(SILENCE))
    feed("g1", gate_telemetry(T0))  # every 30 s: silent after 90 s (that limit now cached)
    quicker = feed.registry.devices["g1"].model_copy(update={"report_interval_s": 10})
    feed.engine.observe(quicker, Channel.TELEMETRY, gate_telemetry(T0 + SECOND), T0 + SECOND)
    feed.registry.devices["g1"] = quicker  # what tick looks devices up in
    [silent] = feed.tick(T0 + 31 * SECOND)
    assert (silent.action, silent.ts_ms) == ("open", T0 + 31 * SECOND)
    assert silent.detail.endswith("(3 × report interval 10s)")


def test_a_restored_engine_observes_with_the_restored_state() -> None:
    # restore fills the state dicts after the engine (and its bound routes) was built.
    feed = Feeder(ruleset(SILENCE))
    feed("g1", gate_telemetry(T0, seq=1))
    assert actions(feed.tick(T0 + 90 * SECOND)) == [("open", "silent")]
    again = feed.restarted()
    assert again("g1", gate_telemetry(T0, seq=1)) == []  # a redelivery, known from the snapshot
    assert actions(again("g1", gate_telemetry(T0 + 100 * SECOND, seq=2))) == [
        ("clear", "back_online")
    ]


@pytest.mark.parametrize("op", [">", ">=", "<", "<="])
def test_threshold_operators_agree_with_compare(op: str) -> None:
    rule_text = base("t", "threshold", "river") + f"  field: water_level_m\n  op: '{op}'\n"
    [rule] = ruleset(rule_text + "  value: 1.0\n")
    ev = ThresholdEvaluator(rule)  # type: ignore[arg-type]
    for x, ref in itertools.product([0.5, 1.0, 1.5], [1.0]):
        assert ev._meets(x, ref) == compare(x, op, ref)
        assert ev._clears(x, ref) == compare(x, ev.clear.op, ref)
