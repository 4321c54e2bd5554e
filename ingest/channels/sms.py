"""A generic HTTP SMS gateway, described in config/channels.yaml rather than coded.

Cities send SMS through a government SMS platform (政务短信平台) or an operator's gateway,
each with its own HTTP shape; this module sends one request built from a template:

- ``url``, ``method`` (POST or GET), ``headers`` (values may use ``{key}``: the gateway's
  secret, e.g. ``Authorization: "Bearer {key}"``), ``content_type`` (``application/json`` or
  ``application/x-www-form-urlencoded``) and ``body``: a template with ``{phone}``, ``{text}``,
  ``{key}`` and ``{id}`` (the notice's idempotency key) replaced — escaped as a JSON string's
  content for JSON, URL-encoded for a form; for GET the body template is the query string.
- success: ``success_path`` (a dotted path in the JSON answer, e.g. ``code`` or
  ``result.status``) equal to ``success_value`` (compared as strings, e.g. ``"OK"`` or ``"0"``);
  ``retry_codes``: values at that path worth trying again (the gateway's "too busy" codes,
  e.g. Aliyun's ``isv.BUSINESS_LIMIT_CONTROL``); any other value fails.
- the text: Chinese SMS carry 70 characters in one segment, 67 in each segment of a long
  (concatenated) message; the text is cut to ``max_segments`` of them (default 3: 201
  characters), marked with "…". Operators also add the signature (【签名】) themselves.

An HTTP 5xx, 429 or 408 is retried; a 2xx whose body is not JSON is ``bad_answer``.
``idempotent``: set true only if the gateway drops a second request with the same ``{id}``.
APIs with their own request signatures (Aliyun's, Tencent Cloud's) need a module of their
own; this one covers gateways that take a static key.
"""

from __future__ import annotations

import json
from typing import Any, Literal
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ingest.channels import Notice, Outcome, Request
from ingest.channels.common import (
    Secret,
    bad_answer,
    cut_chars,
    detail,
    http_outcome,
    plain,
    read_json,
)

SEGMENT_CHARS = 70  # one segment of UCS-2 text
LONG_SEGMENT_CHARS = 67  # each segment of a concatenated message (6 bytes of header)
JSON: Literal["application/json"] = "application/json"
FORM: Literal["application/x-www-form-urlencoded"] = "application/x-www-form-urlencoded"
PLACEHOLDERS = ("{phone}", "{text}", "{key}", "{id}")


def max_chars(segments: int) -> int:
    """How many characters ``segments`` segments carry."""
    return SEGMENT_CHARS if segments == 1 else LONG_SEGMENT_CHARS * segments


class SmsConfig(BaseModel):
    """One SMS gateway in config/channels.yaml."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["sms"]
    url: str = Field(pattern=r"^https?://")
    method: Literal["POST", "GET"] = "POST"
    content_type: Literal["application/json", "application/x-www-form-urlencoded"] = JSON
    headers: dict[str, str] = Field(default_factory=dict)
    key: Secret | None = None
    body: str = Field(min_length=1)
    success_path: str = Field("code", pattern=r"^[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*$")
    success_value: str = "OK"
    retry_codes: tuple[str, ...] = ()
    max_segments: int = Field(3, ge=1, le=10)
    rate_per_minute: int = Field(60, ge=1)
    idempotent: bool = False

    @model_validator(mode="after")
    def _template(self) -> SmsConfig:
        if "{phone}" not in self.body + self.url or "{text}" not in self.body + self.url:
            raise ValueError("the body template needs {phone} and {text}")
        uses_key = "{key}" in self.body + self.url + "".join(self.headers.values())
        if uses_key and self.key is None:
            raise ValueError("the template uses {key}: give the gateway's key")
        if self.content_type == JSON and self.method == "POST":
            probe = self.body
            for name in PLACEHOLDERS:
                probe = probe.replace(name, "x")
            try:
                json.loads(probe)
            except ValueError as e:
                raise ValueError(f"the body template is not JSON: {e}") from None
        return self


def _fill(template: str, values: dict[str, str], escape: Any) -> str:
    out = template
    for name, value in values.items():
        out = out.replace("{" + name + "}", escape(value))
    return out


def _json_escape(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)[1:-1]


def _form_escape(value: str) -> str:
    return quote(value, safe="")


def _at(answer: dict[str, Any], path: str) -> object:
    value: object = answer
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


class Sms:
    """One SMS gateway sending to one phone."""

    type = "sms"

    def __init__(self, config: SmsConfig, phone: str) -> None:
        self.config = config
        self.phone = phone
        self.rate_per_minute = config.rate_per_minute
        self.idempotent = config.idempotent

    def text(self, notice: Notice) -> str:
        """The SMS text, cut to the configured segments."""
        return cut_chars(plain(notice), max_chars(self.config.max_segments))

    def request(self, notice: Notice, now_ms: int) -> Request:
        """The gateway's request from its templates."""
        c = self.config
        key = c.key.get_secret_value() if c.key is not None else ""
        values = {"phone": self.phone, "text": self.text(notice), "key": key, "id": notice.key}
        headers = {k: v.replace("{key}", key) for k, v in c.headers.items()}
        url_values = {k: _form_escape(v) for k, v in values.items()}
        url = _fill(c.url, url_values, str)
        if c.method == "GET":
            query = _fill(c.body, values, _form_escape)
            url += ("&" if "?" in url else "?") + query
            return Request("GET", url, headers, b"")
        escape = _json_escape if c.content_type == JSON else _form_escape
        headers.setdefault("Content-Type", f"{c.content_type}; charset=utf-8")
        return Request("POST", url, headers, _fill(c.body, values, escape).encode())

    def outcome(self, status: int, body: bytes) -> Outcome:
        """The value at ``success_path``: success, a retry code, or a failure."""
        by_status = http_outcome(status, body)
        if by_status is not None:
            return by_status
        answer = read_json(body)
        if answer is None:
            return bad_answer(body)
        value = _at(answer, self.config.success_path)
        if value is None:
            return bad_answer(body)
        code = str(value)
        message = detail(answer.get("message", answer.get("msg", answer.get("Message", ""))))
        if code == self.config.success_value:
            return Outcome(True, False, code, message)
        return Outcome(False, code in self.config.retry_codes, code, message)
