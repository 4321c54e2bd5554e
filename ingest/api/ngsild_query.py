"""NGSI-LD request parameters and errors: problem details, ``idPattern``, ``q``, paging, times.

Errors are NGSI-LD ProblemDetails (ETSI GS CIM 009, 5.5.2): ``{"type", "title", "detail"}``
with ``type`` one of ``https://uri.etsi.org/ngsi-ld/errors/...``. Parameters are parsed here,
not by FastAPI, so a bad one answers in this shape rather than in citysense's error shape.

``idPattern`` is the minimal subset this API needs and can match in linear time: literal
characters, ``.`` (any one character), ``.*`` (any run), ``^`` and ``$`` at the ends (without
them, the pattern may match anywhere in the id, as a regular-expression search does). A full
regular expression from the caller would let one request backtrack for minutes.

``q`` is ``attr<op>value`` terms joined by ``;`` (AND); ``op`` is ``==``, ``!=``, ``>``,
``>=``, ``<``, ``<=``; a value is a number or a string (``"quoted"`` or bare); a term is on
the attribute's ``value`` (a Relationship's ``object``). An entity without the attribute does
not match.
"""

from __future__ import annotations

import json
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fastapi.responses import JSONResponse

ERRORS = "https://uri.etsi.org/ngsi-ld/errors/"
DEFAULT_LIMIT = 20  # NGSI-LD's default page
MAX_LIMIT = 1000
_MAX_PARAM = 256


class NgsiLdError(Exception):
    """An NGSI-LD error: the problem type's name, the HTTP status and what was wrong."""

    def __init__(self, status: int, problem: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.problem = problem
        self.detail = detail

    def response(self) -> JSONResponse:
        """The ProblemDetails answer."""
        body = {"type": ERRORS + self.problem, "title": self.problem, "detail": self.detail}
        return JSONResponse(body, status_code=self.status)


def bad_request(detail: str) -> NgsiLdError:
    """400 BadRequestData."""
    return NgsiLdError(400, "BadRequestData", detail)


def not_found(entity_id: str) -> NgsiLdError:
    """404 ResourceNotFound: no such entity, or not one the caller may see."""
    return NgsiLdError(404, "ResourceNotFound", f"no entity {entity_id[:_MAX_PARAM]!r}")


def _short(text: str) -> str:
    return repr(text[:64] + ("…" if len(text) > 64 else ""))


def id_matcher(pattern: str) -> Callable[[str], bool]:
    """A matcher of ids for ``idPattern`` (see the module docstring); BadRequestData else."""
    if len(pattern) > _MAX_PARAM:
        raise bad_request(f"idPattern is longer than {_MAX_PARAM} characters")
    body = pattern
    anchored_start = body.startswith("^")
    anchored_end = body.endswith("$") and not body.endswith("\\$")
    body = body[1 if anchored_start else 0 : -1 if anchored_end else None]
    tokens: list[str | None] = []  # a literal character, "." (None), or "*" for ".*"
    i = 0
    while i < len(body):
        char = body[i]
        if body.startswith(".*", i):
            tokens.append("*")
            i += 2
        elif char == ".":
            tokens.append(None)
            i += 1
        elif char == "\\" and i + 1 < len(body) and body[i + 1] in r".\^$*":
            tokens.append(body[i + 1])
            i += 2
        elif re.fullmatch(r"[A-Za-z0-9:_\-]", char):
            tokens.append(char)
            i += 1
        else:
            raise bad_request(
                f"idPattern {_short(pattern)}: only letters, digits, ':', '_', '-', '.', '.*' "
                "and the anchors '^' and '$' are supported"
            )
    if not anchored_start:
        tokens.insert(0, "*")
    if not anchored_end:
        tokens.append("*")
    return lambda text: _glob(tokens, text)


def _glob(tokens: list[str | None], text: str) -> bool:
    """Whether ``tokens`` match all of ``text``: one pass per character, no backtracking."""
    states = _closure(tokens, {0})
    for char in text:
        moved = {
            i + 1
            for i in states
            if i < len(tokens) and tokens[i] != "*" and (tokens[i] is None or tokens[i] == char)
        }
        stars = {i for i in states if i < len(tokens) and tokens[i] == "*"}
        states = _closure(tokens, moved | stars)
        if not states:
            return False
    return len(tokens) in states


def _closure(tokens: list[str | None], states: set[int]) -> set[int]:
    """States reachable by skipping ``.*`` tokens (which may match nothing)."""
    out = set(states)
    for i in sorted(states):
        j = i
        while j < len(tokens) and tokens[j] == "*":
            j += 1
            out.add(j)
    return out


_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "==": operator.eq,
    "!=": operator.ne,
    ">=": operator.ge,
    "<=": operator.le,
    ">": operator.gt,
    "<": operator.lt,
}
_TERM = re.compile(r"^([A-Za-z][A-Za-z0-9_\-]*)(==|!=|>=|<=|>|<)(.+)$")


@dataclass(frozen=True, slots=True)
class Term:
    """One ``q`` term."""

    attr: str
    op: str
    value: float | str

    def holds(self, entity: dict[str, Any]) -> bool:
        """Whether the entity's attribute satisfies the term."""
        attribute = entity.get(self.attr)
        if not isinstance(attribute, dict):
            return False
        ours = attribute.get("value", attribute.get("object"))
        if isinstance(ours, bool) and isinstance(self.value, str):
            ours = "true" if ours else "false"
        if isinstance(ours, int | float) and not isinstance(ours, bool):
            if not isinstance(self.value, float):
                return False
        elif not isinstance(ours, str) or not isinstance(self.value, str):
            return False
        try:
            return _OPS[self.op](ours, self.value)
        except TypeError:
            return False


def parse_q(q: str) -> list[Term]:
    """The terms of ``q``; BadRequestData for anything else."""
    if len(q) > _MAX_PARAM:
        raise bad_request(f"q is longer than {_MAX_PARAM} characters")
    terms = []
    for text in q.split(";"):
        match = _TERM.match(text.strip())
        if match is None:
            raise bad_request(f"q term {_short(text)} is not attr<op>value (op: {', '.join(_OPS)})")
        attr, op, raw = match.groups()
        terms.append(Term(attr, op, _q_value(raw)))
    return terms


def _q_value(raw: str) -> float | str:
    if raw.startswith('"') and raw.endswith('"') and len(raw) >= 2:
        try:
            text = json.loads(raw)
        except json.JSONDecodeError:
            raise bad_request(f"q value {_short(raw)} is not a string") from None
        return str(text)
    try:
        return float(raw)
    except ValueError:
        return raw


def parse_int(name: str, raw: str | None, default: int, low: int, high: int) -> int:
    """An integer parameter within [low, high]; BadRequestData else."""
    if raw is None:
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise bad_request(f"{name} must be an integer from {low} to {high}")
    return int(raw)


def parse_time(name: str, raw: str | None) -> datetime:
    """An ISO 8601 time with a zone; BadRequestData when missing, malformed or naive."""
    if raw is None:
        raise bad_request(f"{name} is required")
    try:
        moment = datetime.fromisoformat(raw[:64])
    except ValueError:
        raise bad_request(f"{name} {_short(raw)} is not an ISO 8601 time") from None
    if moment.tzinfo is None:
        raise bad_request(f"{name} needs a zone (Z or +08:00)")
    return moment
