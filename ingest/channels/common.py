"""What the platforms share: the message's lines (Chinese first, English beside), secrets that
may be read from the environment (``env:NAME``), JSON in and out, and the HTTP-level reading
of an answer that every platform falls back on.

An answer that is not JSON (a proxy's error page, an empty body) is never an exception: 5xx,
429 and 408 are worth retrying whatever the body says; a 2xx whose body cannot be read is
``bad_answer`` — not known to be delivered, and not retried either, since a robot has no
idempotency and may well have posted it (a critical notice that is not delivered escalates
after ``escalate_undelivered_after``, config.py).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, SecretStr

from ingest.channels import Notice, Outcome

BAD_ANSWER = "bad_answer"
RETRY_STATUSES = frozenset({408, 429})
DETAIL_MAX = 500

SEVERITY_ZH = {"critical": "特急", "major": "重要", "warning": "警告", "info": "提示"}


def _from_env(value: Any) -> Any:
    """``env:NAME`` → the environment variable NAME (which must be set and not empty)."""
    if isinstance(value, str) and value.startswith("env:"):
        name = value[4:]
        if not name:
            raise ValueError("'env:' needs a variable name, e.g. env:CITYSENSE_DINGTALK_SECRET")
        found = os.environ.get(name)
        if not found:
            raise ValueError(f"environment variable {name} is not set")
        return found
    return value


# A secret in config/channels.yaml: written as is or as ``env:NAME``; never shown in a repr.
Secret = Annotated[SecretStr, BeforeValidator(_from_env)]
# A mobile number to @ or to text: digits, an optional leading +.
Phone = Annotated[str, Field(pattern=r"^\+?[0-9]{5,20}$")]


def json_body(value: Any) -> bytes:
    """Compact UTF-8 JSON (Chinese as is, not \\u escapes: the platforms count bytes)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def read_json(body: bytes) -> dict[str, Any] | None:
    """The body as a JSON object, or None when it is not one."""
    try:
        value = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def cut_bytes(text: str, limit: int, mark: str = "…") -> str:
    """``text`` cut to at most ``limit`` UTF-8 bytes, on a character boundary, marked."""
    data = text.encode()
    if len(data) <= limit:
        return text
    room = limit - len(mark.encode())
    return data[: max(room, 0)].decode("utf-8", errors="ignore") + mark


def cut_chars(text: str, limit: int, mark: str = "…") -> str:
    """``text`` cut to at most ``limit`` characters, marked."""
    return text if len(text) <= limit else text[: max(limit - len(mark), 0)] + mark


def detail(text: object) -> str:
    """A platform's message for the receipt, cut to 500 characters."""
    return cut_chars(str(text), DETAIL_MAX)


def http_outcome(status: int, body: bytes) -> Outcome | None:
    """The answer read from the HTTP status alone when that decides it, else None (a 2xx with
    a readable body: the platform's own code decides)."""
    if status >= 500 or status in RETRY_STATUSES:
        return Outcome(False, True, str(status), detail(body.decode("utf-8", "replace")))
    if not 200 <= status < 300:
        return Outcome(False, False, str(status), detail(body.decode("utf-8", "replace")))
    return None


def bad_answer(body: bytes) -> Outcome:
    """A 2xx whose body is not the platform's JSON."""
    return Outcome(False, False, BAD_ANSWER, detail(body.decode("utf-8", "replace")))


def retry_after_header(headers: Mapping[str, str]) -> float | None:
    """Seconds asked for by a ``Retry-After`` header (seconds or an HTTP date), for the
    delivery loop: it overrides ``Outcome.retry_after_s`` where present. None if absent."""
    value = next((v for k, v in headers.items() if k.lower() == "retry-after"), None)
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max((when - datetime.now(UTC)).total_seconds(), 0.0)


def severity_label(severity: str) -> str:
    """``特急 critical``."""
    return f"{SEVERITY_ZH.get(severity, severity)} {severity}"


def fact_lines(notice: Notice) -> list[tuple[str, str]]:
    """The facts every message carries, labelled Chinese first, English beside."""
    return [
        ("级别 Severity", severity_label(notice.severity)),
        ("地点 Place", notice.place),
        ("数值 Value", notice.value),
        ("规则 Rule", notice.rule),
        ("时间 Time", notice.at),
    ]


LINK_LABEL = "查看详情 Details"


def markdown(notice: Notice, *, heading: str = "### ", bold_labels: bool = True) -> str:
    """The notice as markdown: the title, the facts, the further lines, the link."""
    out = [f"{heading}{notice.title}"]
    for label, value in fact_lines(notice):
        out.append(f"**{label}**: {value}" if bold_labels else f"{label}: {value}")
    out += [f"> {line}" for line in notice.lines]
    out.append(f"[{LINK_LABEL}]({notice.link})")
    return "\n\n".join(out)


def plain(notice: Notice) -> str:
    """The notice as one short plain text (SMS): title, place, value, time, link."""
    return f"{notice.title} {notice.place} {notice.value} {notice.at} {notice.link}"
