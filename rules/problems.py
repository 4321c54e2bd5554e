"""What is wrong with a rule file: every problem names the file, the rule and the field.

The same shape as ``devices.registry.Problem`` / ``RegistryError``, so an operator reads rule and
registry errors the same way: ``config/rules.yaml: rules[3] (id=river_high): attribute: ...``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong in a rule file."""

    file: str
    entry: str  # "rules[3] (id=river_high)", or "(top)" / "(file)"
    field: str  # dotted path inside the rule, e.g. "clear.attribute"
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.entry}: {self.field}: {self.message}"


class RulesError(ValueError):
    """A rule file that cannot be used; ``problems`` lists everything found."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        shown = "\n  ".join(str(p) for p in problems[:50])
        more = f"\n  ... and {len(problems) - 50} more" if len(problems) > 50 else ""
        super().__init__(f"{len(problems)} problem(s) in the rules:\n  {shown}{more}")
