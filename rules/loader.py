"""Load a rule file: YAML → validated rules → cross-checks → a RuleSet, or every problem at once.

Mirrors ``devices.registry.load_registry``: a file is parsed with ``yaml.safe_load`` (no tags
that construct objects, nothing executed), each rule is validated on its own so one bad rule
does not hide the next, and ``RulesError`` lists each problem as file: rule: field: message.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from devices.problems import entry_name, problem_at
from devices.registry import Registry
from rules.checks import check_following, check_rule
from rules.model import FORMS, RULE, AnyRule, RuleSet
from rules.problems import Problem, RulesError

_TAG_ERRORS = frozenset({"union_tag_not_found", "union_tag_invalid", "model_attributes_type"})


def _problems_from(file: str, entry: str, error: ValidationError) -> list[Problem]:
    out = []
    for e in error.errors(include_url=False):
        if e["type"] in _TAG_ERRORS and not e["loc"]:
            message = f"{e['msg']}; the forms are {', '.join(FORMS)}"
            if e["type"] == "model_attributes_type":
                message = "a rule must be a mapping"
            out.append(Problem(file, entry, "type", message))
            continue
        out.append(problem_at(file, entry, e, FORMS, "(rule)"))
    return out


def parse_rules(data: Any, file: str = "<rules>", registry: Registry | None = None) -> RuleSet:
    """Build a RuleSet from parsed YAML; raise RulesError listing every problem.

    With a ``registry``, also check that the devices a rule names exist and that every device
    it watches has the attributes it compares against.
    """
    if not isinstance(data, dict):
        raise RulesError([Problem(file, "(top)", "(file)", "must be a mapping with a rules list")])
    problems = [
        Problem(file, "(top)", str(key), "unknown section; a rule file has only `rules`")
        for key in data
        if key != "rules"
    ]
    raw_rules = data.get("rules")
    if not isinstance(raw_rules, list):
        problems.append(Problem(file, "(top)", "rules", "must be a list of rules"))
        raise RulesError(problems)
    rules: list[AnyRule] = []
    where: list[int] = []  # each parsed rule's index in the file
    seen: dict[str, int] = {}
    for i, raw in enumerate(raw_rules):
        entry = entry_name("rules", i, raw)
        try:
            rule = RULE.validate_python(raw)
        except ValidationError as e:
            problems.extend(_problems_from(file, entry, e))
            continue
        if rule.id in seen:
            problems.append(
                Problem(file, entry, "id", f"duplicate rule id (first at rules[{seen[rule.id]}])")
            )
        else:
            seen[rule.id] = i
        problems.extend(Problem(file, entry, f, m) for f, m in check_rule(rule, registry))
        rules.append(rule)
        where.append(i)
    for k, field, message in check_following(rules):
        i = where[k]
        problems.append(Problem(file, entry_name("rules", i, raw_rules[i]), field, message))
    if problems:
        raise RulesError(problems)
    return RuleSet(rules, file)


def load_rules(path: Path | str, registry: Registry | None = None) -> RuleSet:
    """Load and check a rule file (against ``registry`` too, when given)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise RulesError([Problem(str(path), "(file)", "(yaml)", str(e))]) from None
    except OSError as e:
        raise RulesError([Problem(str(path), "(file)", "(read)", e.strerror or str(e))]) from None
    return parse_rules(data, str(path), registry)
