"""What is wrong with a rule file, said as for every operator file (``devices.problems``)."""

from __future__ import annotations

from devices.problems import FileProblems, Problem

__all__ = ["Problem", "RulesError"]


class RulesError(FileProblems):
    """A rule file that cannot be used; ``problems`` lists everything found."""

    what = "the rules"
