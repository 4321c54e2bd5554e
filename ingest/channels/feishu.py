"""飞书自定义机器人 (Feishu custom bot) with 签名校验 (signature).

As documented (open.feishu.cn/document/client-docs/bot-v3/add-custom-bot, "自定义机器人使用
指南"; the rate limits in "频控策略"):

- ``POST https://open.feishu.cn/open-apis/bot/v2/hook/HOOK``, ``Content-Type:
  application/json``. The hook id in the URL is a credential (a secret here).
- Signature: ``sign = base64(HmacSHA256(key=f"{timestamp}\\n{secret}", msg=b""))`` — the
  string is the *key* and the message is empty (unlike DingTalk's) — with ``timestamp`` in
  seconds, within one hour of Feishu's clock; both go in the JSON body as strings:
  ``{"timestamp": "1599360473", "sign": "...", "msg_type": ..., ...}``.
- ``"msg_type": "interactive", "card": {...}``: a message card — a header (``title``, a
  ``template`` colour: red for critical, orange for major, yellow for warning, blue for info),
  ``div`` elements with ``lark_md`` text, and an ``action`` with a button to the link. The
  request body is at most 20 KB.
- Answer ``{"code": 0, "msg": "success", "data": {}}``. ``19021``: "sign match fail or
  timestamp is not within one hour from current time"; ``19022``: IP not allowed;
  ``19024``: keyword not found; ``9499``: "Bad Request" (a body it cannot use), also seen as
  "too many request"; ``11232``: frequency limited — each bot at most 100 requests a minute
  and 5 a second, and Feishu warns of 11232 at busy moments (on the hour, half past);
  ``99991400`` with HTTP 429: request trigger frequency limit (``x-ogw-ratelimit-reset``
  header: seconds to wait). Retried: 11232, 99991400, 9499 when it says "too many".
- No idempotency key: a retry after a lost answer may post twice.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ingest.channels import Notice, Outcome, Request
from ingest.channels.common import (
    LINK_LABEL,
    Secret,
    bad_answer,
    cut_bytes,
    detail,
    fact_lines,
    http_outcome,
    json_body,
    read_json,
)

URL = "https://open.feishu.cn/open-apis/bot/v2/hook"
BODY_MAX_BYTES = 20 * 1024
RATE_PER_MINUTE = 100
RATE_LIMITED = frozenset({11232, 99991400})
MAYBE_RATE_LIMITED = 9499  # "Bad Request", or "too many request"
RETRY_AFTER_S = 10.0  # without the header we cannot see: a sixth of the minute window
COLOUR = {"critical": "red", "major": "orange", "warning": "yellow", "info": "blue"}


def sign(secret: str, timestamp_s: int) -> str:
    """The body's ``sign``: HMAC-SHA256 keyed by ``f"{timestamp}\\n{secret}"`` of nothing."""
    key = f"{timestamp_s}\n{secret}".encode()
    return base64.b64encode(hmac.new(key, b"", hashlib.sha256).digest()).decode()


class FeishuConfig(BaseModel):
    """One Feishu custom bot in config/channels.yaml."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["feishu"]
    url: str = Field(URL, pattern=r"^https?://")
    hook: Secret  # the id at the end of the webhook address
    secret: Secret  # 签名校验's secret
    rate_per_minute: int = Field(RATE_PER_MINUTE, ge=1, le=RATE_PER_MINUTE)


def card(notice: Notice, room_bytes: int) -> dict[str, Any]:
    """The message card: coloured header, the facts, the further lines, a button."""
    facts = "\n".join(f"**{label}**: {value}" for label, value in fact_lines(notice))
    more = cut_bytes("\n".join(notice.lines), max(room_bytes, 0)) if notice.lines else ""
    elements: list[dict[str, Any]] = [{"tag": "div", "text": {"tag": "lark_md", "content": facts}}]
    if more:
        elements.append({"tag": "div", "text": {"tag": "lark_md", "content": more}})
    elements.append(
        {
            "tag": "action",
            "actions": [
                {
                    "tag": "button",
                    "text": {"tag": "plain_text", "content": LINK_LABEL},
                    "type": "danger" if notice.severity == "critical" else "primary",
                    "url": notice.link,
                }
            ],
        }
    )
    return {
        "config": {"wide_screen_mode": True},
        "header": {
            "title": {"tag": "plain_text", "content": cut_bytes(notice.title, 400)},
            "template": COLOUR.get(notice.severity, "blue"),
        },
        "elements": elements,
    }


class Feishu:
    """A Feishu custom bot with signature."""

    type = "feishu"
    idempotent = False

    def __init__(self, config: FeishuConfig) -> None:
        self.config = config
        self.rate_per_minute = config.rate_per_minute

    def request(self, notice: Notice, now_ms: int) -> Request:
        """The signed card for ``now_ms`` (the signature's timestamp is in seconds)."""
        ts = now_ms // 1000
        head = {
            "timestamp": str(ts),
            "sign": sign(self.config.secret.get_secret_value(), ts),
            "msg_type": "interactive",
        }
        room = BODY_MAX_BYTES - len(json_body({**head, "card": card(notice, 0)})) - 64
        body = json_body({**head, "card": card(notice, room)})
        while len(body) > BODY_MAX_BYTES and room > 0:  # JSON escapes made it longer
            room -= len(body) - BODY_MAX_BYTES + 64
            body = json_body({**head, "card": card(notice, room)})
        url = f"{self.config.url}/{self.config.hook.get_secret_value()}"
        return Request("POST", url, {"Content-Type": "application/json; charset=utf-8"}, body)

    def outcome(self, status: int, body: bytes) -> Outcome:
        """``code`` 0 (or the older ``StatusCode`` 0): delivered; rate limits: retry."""
        answer = read_json(body)
        if status == 429 or (answer is not None and answer.get("code") in RATE_LIMITED):
            code = str(answer.get("code", status)) if answer else str(status)
            text = detail(answer.get("msg", "")) if answer else ""
            return Outcome(False, True, code, text, retry_after_s=RETRY_AFTER_S)
        by_status = http_outcome(status, body)
        if by_status is not None:
            return by_status
        if answer is None:
            return bad_answer(body)
        number = answer.get("code", answer.get("StatusCode"))
        if not isinstance(number, int):
            return bad_answer(body)
        message = detail(answer.get("msg", answer.get("StatusMessage", "")))
        if number == 0:
            return Outcome(True, False, "0", message)
        if number == MAYBE_RATE_LIMITED and "too many" in message.lower():
            return Outcome(False, True, str(number), message, retry_after_s=RETRY_AFTER_S)
        return Outcome(False, False, str(number), message)
