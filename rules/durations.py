"""Durations in rule files: ``"30s"``, ``"10m"``, ``"1h30m"``, held as integer milliseconds.

Only strings with units are accepted: a bare ``30`` could mean seconds or minutes, and a rule
file is no place to guess.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer

_UNIT_MS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_WHOLE = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h|d))+")
MAX_MS = 366 * 86_400_000  # a year: longer than any window or escalation makes sense


def parse_duration(value: Any) -> int:
    """``"1h30m"`` → 5_400_000; raise ValueError for anything that is not such a string."""
    if not isinstance(value, str):
        raise ValueError(
            f"a duration is a string with a unit such as '30s', '10m' or '1h', not {value!r}"
        )
    text = value.strip()
    if not _WHOLE.fullmatch(text):
        raise ValueError(f"{value!r} is not a duration such as '30s', '10m', '1h30m' or '500ms'")
    total = 0.0
    for number, unit in _PART.findall(text):
        total += float(number) * _UNIT_MS[unit]
    if total > MAX_MS:
        raise ValueError(f"{value!r} is longer than a year")
    return round(total)


def format_duration(ms: int) -> str:
    """The shortest exact spelling: 5_400_000 → ``"1h30m"``; 0 → ``"0s"``."""
    if ms == 0:
        return "0s"
    out = []
    rest = ms
    for unit in ("d", "h", "m", "s", "ms"):
        size = _UNIT_MS[unit]
        if rest >= size:
            out.append(f"{rest // size}{unit}")
            rest %= size
    return "".join(out)


# A duration field: written "10m" in YAML, an int of milliseconds in Python, "10m" in JSON.
Duration = Annotated[
    int,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str, when_used="json"),
]
