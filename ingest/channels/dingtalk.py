"""钉钉自定义机器人 (DingTalk custom robot) with 加签 (signed timestamp).

As documented (open.dingtalk.com, "自定义机器人接入" / "自定义机器人安全设置"):

- ``POST https://oapi.dingtalk.com/robot/send?access_token=TOKEN&timestamp=MS&sign=SIGN``,
  ``Content-Type: application/json;charset=utf-8``.
- 加签: ``SIGN = urlEncode(base64(HmacSHA256(key=secret, msg=f"{timestamp}\\n{secret}")))``,
  UTF-8, ``timestamp`` in milliseconds, within one hour of DingTalk's clock; ``secret`` is the
  ``SEC…`` string the robot's security settings show under 加签.
- ``{"msgtype": "markdown", "markdown": {"title": ..., "text": ...}, "at": {"atMobiles":
  [...], "isAtAll": false}}``: ``title`` is what the conversation list shows; a phone in
  ``atMobiles`` is @'d only if the text also contains ``@phone``.
- Answer ``{"errcode": 0, "errmsg": "ok"}``. ``130101``: sending too fast — each robot at
  most 20 messages a minute, past that it is throttled for 10 minutes (the answer may carry
  ``"wait": seconds``); ``310000``: the security check failed (sign not match, invalid
  timestamp, keyword or IP not allowed); ``300001`` / ``400101``: the access token does not
  exist; ``40035``: a parameter is missing. Not retried but 130101.
- No idempotency key: a retry after a lost answer may post twice.

We keep ``text`` under 4000 characters (no byte limit for markdown was found in the
documentation we could read; a robot's message is meant to be a summary).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Literal
from urllib.parse import quote_plus

from pydantic import BaseModel, ConfigDict, Field

from ingest.channels import Notice, Outcome, Request
from ingest.channels.common import (
    Phone,
    Secret,
    bad_answer,
    cut_chars,
    detail,
    http_outcome,
    json_body,
    markdown,
    read_json,
)

URL = "https://oapi.dingtalk.com/robot/send"
TEXT_MAX_CHARS = 4000
TITLE_MAX_CHARS = 64
RATE_LIMITED = 130101
RATE_PER_MINUTE = 20


def sign(secret: str, timestamp_ms: int) -> str:
    """The 加签 ``sign`` parameter, URL-encoded as DingTalk documents."""
    to_sign = f"{timestamp_ms}\n{secret}".encode()
    digest = hmac.new(secret.encode(), to_sign, hashlib.sha256).digest()
    return quote_plus(base64.b64encode(digest).decode())


class DingtalkConfig(BaseModel):
    """One DingTalk custom robot in config/channels.yaml."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["dingtalk"]
    url: str = Field(URL, pattern=r"^https?://")
    access_token: Secret
    secret: Secret  # the SEC… string of 加签
    mention_mobiles: tuple[Phone, ...] = ()
    rate_per_minute: int = Field(RATE_PER_MINUTE, ge=1, le=RATE_PER_MINUTE)


class Dingtalk:
    """A DingTalk custom robot with 加签."""

    type = "dingtalk"
    idempotent = False

    def __init__(self, config: DingtalkConfig) -> None:
        self.config = config
        self.rate_per_minute = config.rate_per_minute

    def request(self, notice: Notice, now_ms: int) -> Request:
        """The signed send request for ``now_ms``."""
        mobiles = list(self.config.mention_mobiles)
        mentions = ("\n\n" + " ".join(f"@{m}" for m in mobiles)) if mobiles else ""
        text = cut_chars(markdown(notice), TEXT_MAX_CHARS - len(mentions)) + mentions
        payload = {
            "msgtype": "markdown",
            "markdown": {"title": cut_chars(notice.title, TITLE_MAX_CHARS), "text": text},
            "at": {"atMobiles": mobiles, "isAtAll": False},
        }
        token = quote_plus(self.config.access_token.get_secret_value())
        signature = sign(self.config.secret.get_secret_value(), now_ms)
        url = f"{self.config.url}?access_token={token}&timestamp={now_ms}&sign={signature}"
        headers = {"Content-Type": "application/json;charset=utf-8"}
        return Request("POST", url, headers, json_body(payload))

    def outcome(self, status: int, body: bytes) -> Outcome:
        """``errcode`` 0: delivered; 130101: retry after ``wait`` (or a minute); others:
        failed."""
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
            wait = answer.get("wait")
            after = float(wait) if isinstance(wait, int | float) and wait > 0 else 60.0
            return Outcome(False, True, str(code), message, retry_after_s=after)
        return Outcome(False, False, str(code), message)
