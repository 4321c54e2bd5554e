"""What is wrong: alert rules, their evaluation state and the alert lifecycle (docs/rules.md).

The rule engine here is pure: no I/O, no asyncio, no wall clock. The ingest pipeline feeds it
validated messages and the time; it answers with transitions, and its state is plain data.

Public API::

    rules = load_rules(path, registry)          # RuleSet, or RulesError listing every problem
    engine = Engine(rules, registry)            # or Engine.restore(rules, registry, snapshot)
    engine.observe(device, channel, message, ts_ms) -> list[Transition]
    engine.tick(now_ms) -> list[Transition]     # silence, clear_after, sliding windows, flaps
    engine.resolve(rule_id, device_id, now_ms)  # a person resolved it: forget the condition
    engine.adopt(rule_id, device_id, opened_ts) # the store has it open: the next reading decides
    engine.snapshot() -> dict                   # JSON-ready; persist it with the alerts

Modules: ``model`` (rule models), ``loader`` and ``checks`` (files and cross-checks),
``problems`` (errors), ``schema`` (what payloads and devices offer), ``durations``,
``waterquality`` (GB 3838-2002 table and ``classify``), ``windows`` (window maths),
``transition``, ``state`` (plain-data state), ``evaluator`` (lifecycle and flap suppression),
one module per form (``threshold``, ``rate``, ``events``, ``quality``, ``silence``) and
``engine``.

Device time throughout. Late and out-of-order messages, per form (details in each module):
- threshold, water_quality: a reading no newer than the newest evaluated is ignored;
- rate_of_change: a late reading inside the window is merged into it, evaluated with the
  next in-order reading; older ones are dropped;
- event: a late match updates an open condition, opens a closed one unless it predates the last
  clear or would already have expired (``ts + clear_after <= device's newest time``);
- event_count: a late match inside the current window counts (windows are defined on
  timestamps); one outside it or before the last clear does not;
- silence: times only move forward; a message no newer than the newest changes no condition.
Duplicates: a (``seq``, ``ts``) the device already sent is dropped before any rule sees it
(``seen``: runs of seqs, so a whole redelivered window is recognised). A stamp past
``not_after_ms`` (the message's arrival) is judged at the stamp less the device's measured
lead, never past ``not_after_ms``; a stamp sent again is judged no later than the first time.
A rule that raises loses only its own verdict (``engine.failures``).
"""

from rules.engine import Engine
from rules.loader import load_rules, parse_rules
from rules.model import AnyRule, RuleSet, Severity
from rules.problems import Problem, RulesError
from rules.state import SnapshotError
from rules.transition import Reason, Transition
from rules.waterquality import WaterClass, classify

__all__ = [
    "AnyRule",
    "Engine",
    "Problem",
    "Reason",
    "RuleSet",
    "RulesError",
    "Severity",
    "SnapshotError",
    "Transition",
    "WaterClass",
    "classify",
    "load_rules",
    "parse_rules",
]
