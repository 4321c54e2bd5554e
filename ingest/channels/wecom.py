"""企业微信群机器人 (WeCom group robot): a group's webhook, no signature.

As documented (developer.work.weixin.qq.com/document/path/91770, "群机器人配置说明"):

- ``POST https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=KEY``, ``Content-Type:
  application/json``, UTF-8. The key in the URL is the only credential: whoever has it can
  post to the group, so it is a secret (``env:NAME`` in config/channels.yaml).
- ``{"msgtype": "markdown", "markdown": {"content": ...}}``: content at most 4096 bytes.
  Markdown cannot @ people by phone; ``text`` can: ``{"msgtype": "text", "text": {"content":
  ..., "mentioned_mobile_list": [...]}}``, content at most 2048 bytes. So an endpoint with
  ``mention_mobiles`` sends text (the same lines, without markdown) and @s them; without,
  markdown.
- Answer ``{"errcode": 0, "errmsg": "ok"}``. ``45009``: over the limit — each robot at most
  20 messages a minute; ``93000``: the webhook key is not valid (a wrong or deleted robot);
  ``40008``/``44004``/``40058``: a message of the wrong type, empty or with a bad parameter
  (``45002``: content too long). Not retried but 45009 (after a minute).
- No idempotency key: a retry after a lost answer may post twice.
"""

from __future__ import annotations

from typing import Literal
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field

from ingest.channels import Notice, Outcome, Request
from ingest.channels.common import (
    Phone,
    Secret,
    bad_answer,
    cut_bytes,
    detail,
    fact_lines,
    http_outcome,
    json_body,
    markdown,
    read_json,
)

URL = "https://qyapi.weixin.qq.com/cgi-bin/webhook/send"
MARKDOWN_MAX_BYTES = 4096
TEXT_MAX_BYTES = 2048
RATE_LIMITED = 45009
RATE_PER_MINUTE = 20


class WecomConfig(BaseModel):
    """One WeCom group robot in config/channels.yaml."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["wecom"]
    url: str = Field(URL, pattern=r"^https?://")
    key: Secret
    mention_mobiles: tuple[Phone, ...] = ()  # @ these (sends text: markdown cannot @ by phone)
    rate_per_minute: int = Field(RATE_PER_MINUTE, ge=1, le=RATE_PER_MINUTE)


class Wecom:
    """A WeCom group robot."""

    type = "wecom"
    idempotent = False

    def __init__(self, config: WecomConfig) -> None:
        self.config = config
        self.rate_per_minute = config.rate_per_minute

    def request(self, notice: Notice, now_ms: int) -> Request:
        """The robot's send request: markdown, or text with @phones when configured."""
        mobiles = list(self.config.mention_mobiles)
        if mobiles:
            lines = [notice.title, *(f"{k}: {v}" for k, v in fact_lines(notice))]
            lines += [*notice.lines, notice.link]
            text = cut_bytes("\n".join(lines), TEXT_MAX_BYTES)
            payload: dict[str, object] = {
                "msgtype": "text",
                "text": {"content": text, "mentioned_mobile_list": mobiles},
            }
        else:
            content = cut_bytes(markdown(notice), MARKDOWN_MAX_BYTES)
            payload = {"msgtype": "markdown", "markdown": {"content": content}}
        url = f"{self.config.url}?key={quote(self.config.key.get_secret_value(), safe='')}"
        headers = {"Content-Type": "application/json; charset=utf-8"}
        return Request("POST", url, headers, json_body(payload))

    def outcome(self, status: int, body: bytes) -> Outcome:
        """``errcode`` 0: delivered; 45009: retry after a minute; others: failed."""
        by_status = http_outcome(status, body)
        if by_status is not None:
            return by_status
        answer = read_json(body)
        if answer is None or not isinstance(answer.get("errcode"), int):
            return bad_answer(body)
        code = answer["errcode"]
        message = detail(answer.get("errmsg", ""))
        if code == 0:
            return Outcome(True, False, "0", message)
        if code == RATE_LIMITED:
            return Outcome(False, True, str(code), message, retry_after_s=60.0)
        return Outcome(False, False, str(code), message)
