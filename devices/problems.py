"""What is wrong with an operator's file (registry, rules, workers), said the same way for all.

Every problem names the file, the entry and the field, so an operator reads them alike:
``config/rules.yaml: rules[3] (id=river_high): attribute: ...``. Operator files are read
strictly (an unknown key is a problem), and every problem is listed at once, not the first.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import ValidationError
from pydantic_core import ErrorDetails


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong in a file."""

    file: str
    entry: str  # "rules[3] (id=river_high)", or "(top)" / "(file)"
    field: str  # dotted path inside the entry, e.g. "clear.attribute"
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.entry}: {self.field}: {self.message}"


class FileProblems(ValueError):
    """A file that cannot be used; ``problems`` lists everything found."""

    what: ClassVar[str] = "the file"
    shown_at_most: ClassVar[int] = 50

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        shown = "\n  ".join(str(p) for p in problems[: self.shown_at_most])
        extra = len(problems) - self.shown_at_most
        more = f"\n  ... and {extra} more" if extra > 0 else ""
        super().__init__(f"{len(problems)} problem(s) in {self.what}:\n  {shown}{more}")


def entry_name(section: str, index: int, raw: Any) -> str:
    """How a problem names the ``index``-th entry of ``section``: with its id when it has one."""
    ident = raw.get("id") if isinstance(raw, dict) else None
    return f"{section}[{index}]" + (f" (id={ident})" if ident is not None else "")


def problem_at(
    file: str, entry: str, error: ErrorDetails, tags: Collection[str], whole: str
) -> Problem:
    """One pydantic error as a problem.

    A discriminated union puts the chosen tag first in the location: it is dropped for
    readers (only there, as a tag may also be a field name).
    """
    loc = [str(p) for p in error["loc"]]
    if loc and loc[0] in tags:
        loc = loc[1:]
    return Problem(file, entry, ".".join(loc) or whole, error["msg"])


def problems_from(
    file: str, entry: str, error: ValidationError, tags: Collection[str], whole: str
) -> list[Problem]:
    """Every error of a validation as a problem (``problem_at``)."""
    return [problem_at(file, entry, e, tags, whole) for e in error.errors(include_url=False)]
