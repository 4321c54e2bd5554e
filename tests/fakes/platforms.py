"""Fake WeCom, DingTalk, Feishu, SMS and webhook servers that check a request the way each
platform does and answer as it does (ingest/channels/: each module's docstring has what the
platform documents).

Each fake is an aiohttp server on 127.0.0.1 (``await fake.start()`` gives its base URL). It
records every request in ``received`` (with its answer) — ``delivered`` are those it accepted,
``keys()`` counts them per idempotency key, so a test sees deliveries and duplicates. Set
``down`` for 500s; ``rate_per_minute`` (and Feishu's ``rate_per_second``) is how many
accepted requests a minute it takes before it answers with the platform's rate-limit code;
``clock`` (seconds) is the fake's own clock for the timestamp checks.

Where the platform's documentation names no code for a check (a body that is not JSON, say),
the fake answers with the code that platform uses for a bad parameter; those are marked
"(fake's choice)".
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

Answer = tuple[int, Any]  # HTTP status, JSON answer (or a str for a plain body)


@dataclass
class Received:
    """One request as the fake saw it, and what it answered."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    json: Any
    status: int
    answer: Any
    accepted: bool
    key: str | None  # the idempotency key, where the platform has one
    at: float = 0.0  # the fake's clock when it arrived


class FakePlatform:
    """What every fake shares: the server, the record, ``down`` and the rate limit."""

    name = "fake"

    def __init__(self, *, rate_per_minute: int = 20, clock: Callable[[], float] = time.time):
        self.rate_per_minute = rate_per_minute
        self.clock = clock
        self.down = False
        self.retry_after = 30  # the Retry-After of a 429
        self.received: list[Received] = []
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> str:
        """Serve on a free port of 127.0.0.1; the base URL."""
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        return self.url

    async def stop(self) -> None:
        """Stop serving."""
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def delivered(self) -> list[Received]:
        """The requests it accepted."""
        return [r for r in self.received if r.accepted]

    def keys(self) -> Counter[str]:
        """Accepted requests per idempotency key (a count above 1 is a duplicate)."""
        return Counter(r.key for r in self.delivered if r.key is not None)

    def over_rate(self) -> bool:
        """Whether a minute's worth of accepted requests has already arrived."""
        since = self.clock() - 60
        return sum(1 for r in self.received if r.accepted and r.at >= since) >= self.rate_per_minute

    def check(self, request: web.Request, body: bytes, data: Any) -> tuple[Answer, bool]:
        """The platform's answer and whether it took the message."""
        raise NotImplementedError

    def key_of(self, request: web.Request, data: Any) -> str | None:
        """The idempotency key of a request, where the platform has one."""
        return None

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            data = json.loads(body) if body else None
        except ValueError:
            data = None
        if self.down:
            (status, answer), accepted = (500, "the fake is down"), False
        else:
            (status, answer), accepted = self.check(request, body, data)
        received = Received(
            request.method,
            request.path,
            dict(request.query),
            dict(request.headers),
            body,
            data,
            status,
            answer,
            accepted,
            self.key_of(request, data),
            self.clock(),
        )
        self.received.append(received)
        headers = {"Retry-After": str(self.retry_after)} if status == 429 else {}
        if isinstance(answer, str):
            return web.Response(status=status, text=answer, headers=headers)
        return web.json_response(answer, status=status, dumps=_dumps, headers=headers)


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _is_json(request: web.Request) -> bool:
    return request.content_type == "application/json"


def _text(value: Any) -> bool:
    return isinstance(value, str) and value != ""


class FakeWecom(FakePlatform):
    """企业微信群机器人: key, msgtype text/markdown, byte limits, 45009 past 20 a minute."""

    name = "wecom"

    def __init__(self, key: str, **kw: Any) -> None:
        super().__init__(**kw)
        self.key = key

    def check(self, request: web.Request, body: bytes, data: Any) -> tuple[Answer, bool]:
        def err(code: int, msg: str) -> tuple[Answer, bool]:
            return (200, {"errcode": code, "errmsg": msg}), False

        if request.path != "/cgi-bin/webhook/send" or request.method != "POST":
            return (404, "not found"), False
        if request.query.get("key") != self.key:
            return err(93000, "invalid webhook url")
        if not _is_json(request) or not isinstance(data, dict):
            return err(40058, "invalid json body (fake's choice)")
        kind = data.get("msgtype")
        if kind not in ("text", "markdown") or not isinstance(data.get(kind), dict):
            return err(40008, "invalid message type")
        content = data[kind].get("content")
        if not _text(content):
            return err(44004, "empty content")
        limit = 2048 if kind == "text" else 4096
        if len(content.encode()) > limit:
            return err(45002, f"content size out of limit ({limit} bytes)")
        mobiles = data[kind].get("mentioned_mobile_list", [])
        if not isinstance(mobiles, list) or not all(isinstance(m, str) for m in mobiles):
            return err(40058, "invalid mentioned_mobile_list")
        if self.over_rate():
            return err(45009, "api freq out of limit")
        return (200, {"errcode": 0, "errmsg": "ok"}), True


class FakeDingtalk(FakePlatform):
    """钉钉自定义机器人 with 加签: token, timestamp within an hour, sign, markdown shape."""

    name = "dingtalk"

    def __init__(self, access_token: str, secret: str, **kw: Any) -> None:
        super().__init__(**kw)
        self.access_token = access_token
        self.secret = secret
        self.max_text_bytes = 20_000

    def expected_sign(self, timestamp: str) -> str:
        """DingTalk's signature of ``timestamp`` (base64, before URL encoding)."""
        mac = hmac.new(self.secret.encode(), f"{timestamp}\n{self.secret}".encode(), "sha256")
        return base64.b64encode(mac.digest()).decode()

    def check(self, request: web.Request, body: bytes, data: Any) -> tuple[Answer, bool]:
        def err(code: int, msg: str) -> tuple[Answer, bool]:
            return (200, {"errcode": code, "errmsg": msg}), False

        if request.path != "/robot/send" or request.method != "POST":
            return (404, "not found"), False
        q = request.query
        if q.get("access_token") != self.access_token:
            return err(300001, "token is not exist")
        stamp, sign = q.get("timestamp", ""), q.get("sign", "")
        if not stamp.isdigit() or abs(int(stamp) - self.clock() * 1000) > 3_600_000:
            return err(310000, "invalid timestamp")
        if not hmac.compare_digest(sign, self.expected_sign(stamp)):
            return err(310000, "sign not match")
        if not _is_json(request) or not isinstance(data, dict):
            return err(40035, "缺少参数 json")
        kind = data.get("msgtype")
        part = data.get(kind) if isinstance(kind, str) else None
        if kind == "markdown":
            if not isinstance(part, dict) or not (
                _text(part.get("title")) and _text(part.get("text"))
            ):
                return err(40035, "缺少参数 markdown.title / markdown.text")
            text = part["text"]
        elif kind == "text":
            if not isinstance(part, dict) or not _text(part.get("content")):
                return err(40035, "缺少参数 text.content")
            text = part["content"]
        else:
            return err(40035, "不支持的 msgtype")
        if len(text.encode()) > self.max_text_bytes:
            return err(460101, "message too long (fake's choice)")
        at = data.get("at", {})
        mobiles = at.get("atMobiles", []) if isinstance(at, dict) else None
        if not isinstance(mobiles, list) or not all(isinstance(m, str) for m in mobiles):
            return err(40035, "at.atMobiles must be a list of phones")
        if self.over_rate():
            return err(130101, "send too fast, exceed 20 times per minute")
        return (200, {"errcode": 0, "errmsg": "ok"}), True


class FakeFeishu(FakePlatform):
    """飞书自定义机器人 with 签名校验: hook, timestamp within an hour, sign, card, 20 KB."""

    name = "feishu"

    def __init__(self, hook: str, secret: str, *, rate_per_second: int = 5, **kw: Any) -> None:
        kw.setdefault("rate_per_minute", 100)
        super().__init__(**kw)
        self.hook = hook
        self.secret = secret
        self.rate_per_second = rate_per_second

    def expected_sign(self, timestamp: str) -> str:
        """Feishu's signature: the HMAC keyed by ``timestamp\\nsecret`` of nothing."""
        key = f"{timestamp}\n{self.secret}".encode()
        return base64.b64encode(hmac.new(key, b"", hashlib.sha256).digest()).decode()

    def over_rate(self) -> bool:
        since = self.clock() - 1
        last_second = sum(1 for r in self.received if r.accepted and r.at >= since)
        return last_second >= self.rate_per_second or super().over_rate()

    def check(self, request: web.Request, body: bytes, data: Any) -> tuple[Answer, bool]:
        def err(code: int, msg: str) -> tuple[Answer, bool]:
            return (200, {"code": code, "msg": msg, "data": {}}), False

        if request.path != f"/open-apis/bot/v2/hook/{self.hook}":
            return err(19001, "param invalid: incoming webhook access token invalid")
        if request.method != "POST":
            return (405, "method not allowed"), False
        if len(body) > 20 * 1024:
            return err(9499, "Bad Request: request body larger than 20 KB")
        if not _is_json(request) or not isinstance(data, dict):
            return err(9499, "Bad Request")
        stamp, sign = data.get("timestamp"), data.get("sign")
        late = not isinstance(stamp, str) or not stamp.isdigit()
        late = late or abs(int(str(stamp)) - self.clock()) > 3600
        if late or not isinstance(sign, str) or sign != self.expected_sign(str(stamp)):
            why = "sign match fail or timestamp is not within one hour from current time"
            return err(19021, why)
        kind = data.get("msg_type")
        if kind not in ("text", "post", "image", "share_chat", "interactive"):
            return err(19002, "params error, msg_type need")
        if kind == "interactive":
            card = data.get("card")
            elements = card.get("elements") if isinstance(card, dict) else None
            header = card.get("header", {}) if isinstance(card, dict) else None
            title = header.get("title", {}) if isinstance(header, dict) else None
            if not isinstance(elements, list) or not elements or not isinstance(title, dict):
                return err(9499, "Bad Request: card needs header.title and elements")
            if not _text(title.get("content")):
                return err(9499, "Bad Request: empty card title")
        if self.over_rate():
            return err(11232, "frequency limited psm[lark.oapi.app_platform_runtime]")
        return (200, {"code": 0, "msg": "success", "data": {}}), True


class FakeSms(FakePlatform):
    """The example city's SMS gateway (config/channels.yaml ``city-sms``): bearer key, JSON
    ``mobile``/``content``/``requestId``, content at most ``max_chars``; FLOW_CONTROL past
    the rate."""

    name = "sms"

    def __init__(self, key: str, *, max_chars: int = 201, **kw: Any) -> None:
        kw.setdefault("rate_per_minute", 60)
        super().__init__(**kw)
        self.key = key
        self.max_chars = max_chars

    def key_of(self, request: web.Request, data: Any) -> str | None:
        return data.get("requestId") if isinstance(data, dict) else None

    def check(self, request: web.Request, body: bytes, data: Any) -> tuple[Answer, bool]:
        def err(code: str, msg: str) -> tuple[Answer, bool]:
            return (200, {"code": code, "message": msg}), False

        if request.path != "/sms/send" or request.method != "POST":
            return (404, "not found"), False
        if request.headers.get("Authorization") != f"Bearer {self.key}":
            return err("AUTH_FAILED", "bad key")
        if not _is_json(request) or not isinstance(data, dict):
            return err("BAD_REQUEST", "not JSON")
        mobile, content = data.get("mobile"), data.get("content")
        if not isinstance(mobile, str) or not mobile.lstrip("+").isdigit():
            return err("BAD_MOBILE", "mobile")
        if not _text(content):
            return err("BAD_REQUEST", "empty content")
        if len(content) > self.max_chars:
            return err("TOO_LONG", f"content over {self.max_chars} characters")
        if self.over_rate():
            return err("FLOW_CONTROL", "too many messages")
        return (200, {"code": "OK", "message": "sent"}), True


NOTICE_FIELDS = [
    "key",
    "subject",
    "subject_id",
    "event",
    "severity",
    "title",
    "place",
    "rule",
    "value",
    "at",
    "link",
    "lines",
    "data",
]


class FakeWebhook(FakePlatform):
    """A receiver of citysense's signed webhook: signature, 5-minute window, dedup by key."""

    name = "webhook"

    def __init__(self, secret: str, **kw: Any) -> None:
        kw.setdefault("rate_per_minute", 600)
        super().__init__(**kw)
        self.secret = secret

    def key_of(self, request: web.Request, data: Any) -> str | None:
        return request.headers.get("X-Citysense-Idempotency-Key")

    def duplicates(self) -> Counter[str]:
        """Requests acknowledged but dropped as a key already seen, per key."""
        return Counter(r.key for r in self.received if r.key and r.status == 200 and not r.accepted)

    def check(self, request: web.Request, body: bytes, data: Any) -> tuple[Answer, bool]:
        if request.method != "POST":
            return (405, "method not allowed"), False
        stamp = request.headers.get("X-Citysense-Timestamp", "")
        given = request.headers.get("X-Citysense-Signature", "")
        if not stamp.isdigit() or abs(int(stamp) - self.clock() * 1000) > 300_000:
            return (401, {"error": "stale or missing timestamp"}), False
        mac = hmac.new(self.secret.encode(), f"{stamp}.".encode() + body, hashlib.sha256)
        if not hmac.compare_digest(given, mac.hexdigest()):
            return (401, {"error": "bad signature"}), False
        key = self.key_of(request, data)
        if not _is_json(request) or not isinstance(data, dict) or not key:
            return (400, {"error": "bad request"}), False
        if sorted(data) != sorted(NOTICE_FIELDS) or data["key"] != key:
            return (422, {"error": "not a notice"}), False
        if self.over_rate():
            return (429, {"error": "slow down"}), False
        if key in self.keys():
            return (200, {"duplicate": True}), False  # seen: acknowledged, not a second one
        return (200, {"ok": True}), True
