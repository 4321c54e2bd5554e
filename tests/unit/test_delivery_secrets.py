"""Review of dd83847: a platform's redirect carries the SMS gateway's key to another origin
(aiohttp follows redirects; only Authorization is dropped), and a redirect loop writes the
WeCom key into the receipt that GET /deliveries shows."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from ingest.alerts.store import AlertStore, sqlite_url
from ingest.channels.config import platform_of
from ingest.channels.sms import SmsConfig
from ingest.channels.wecom import WecomConfig
from ingest.delivery.backoff import Backoff
from ingest.delivery.plan import ChannelPlan, Endpoint
from ingest.delivery.store import DeliveryStore
from tests.unit.delivery_city import SMS_BODY, alert, announcements
from tests.unit.test_delivery_sender import sender, until

SECRET = "SUPERSECRETKEY123"


class Two:
    def __init__(self) -> None:
        self.a = ""
        self.b = ""
        self.seen_by_b: list[tuple[dict[str, str], bytes]] = []


async def _site(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    return runner, f"http://{host}:{port}"


@pytest.fixture
async def two() -> AsyncIterator[Two]:
    t = Two()

    async def other(request: web.Request) -> web.Response:  # another origin (another port)
        t.seen_by_b.append((dict(request.headers), await request.read()))
        return web.json_response({"code": "OK"})

    async def gateway(request: web.Request) -> web.Response:
        raise web.HTTPTemporaryRedirect(f"{t.b}/collect")

    async def loop(request: web.Request) -> web.Response:
        raise web.HTTPFound(str(request.rel_url))

    b = web.Application()
    b.router.add_route("*", "/collect", other)
    rb, t.b = await _site(b)
    a = web.Application()
    a.router.add_post("/sms/send", gateway)
    a.router.add_route("*", "/cgi-bin/webhook/send", loop)
    ra, t.a = await _site(a)
    yield t
    await ra.cleanup()
    await rb.cleanup()


@pytest.fixture
def stores(tmp_path: Path) -> tuple[AlertStore, DeliveryStore]:
    url = sqlite_url(tmp_path)
    return AlertStore(url), DeliveryStore(url)


async def test_the_sms_key_does_not_follow_a_redirect_to_another_origin(
    two: Two, stores: tuple[AlertStore, DeliveryStore]
) -> None:
    alerts, deliveries = stores
    config = SmsConfig(
        type="sms",
        url=f"{two.a}/sms/send",
        headers={"X-Api-Key": "{key}"},
        key=SECRET,
        body=SMS_BODY,
    )
    plan = ChannelPlan(
        endpoints={"gw": Endpoint("sms", 60, lambda phone: platform_of(config, phone))},
        recipients={"grid/g1": ("gw",)},
        phones={"grid/g1": "13900000001"},
        severities={"critical": frozenset({"sms"})},
    )
    alerts.queue_announcements(announcements(alert("critical", ("grid/g1",))))
    s = sender(deliveries, plan)
    task = asyncio.create_task(s.run())
    try:
        await until(lambda: s.counts.attempts >= 1, timeout_s=5.0)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    leaked = [h for h, body in two.seen_by_b if SECRET in str(h) or SECRET.encode() in body]
    assert not two.seen_by_b, f"request re-sent to another origin; key leaked: {bool(leaked)}"


async def test_a_redirect_loop_does_not_put_the_wecom_key_in_the_receipt(
    two: Two, stores: tuple[AlertStore, DeliveryStore]
) -> None:
    alerts, deliveries = stores
    config = WecomConfig(type="wecom", url=f"{two.a}/cgi-bin/webhook/send", key=SECRET)
    plan = ChannelPlan(
        endpoints={"robot": Endpoint("wecom", 20, lambda _p: platform_of(config))},
        recipients={"grid/g1": ("robot",)},
        severities={"critical": frozenset({"wecom"})},
    )
    alerts.queue_announcements(announcements(alert("critical", ("grid/g1",))))
    s = sender(deliveries, plan, backoff=Backoff(60, 60))
    task = asyncio.create_task(s.run())
    try:
        await until(lambda: s.counts.attempts >= 1, timeout_s=5.0)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    rows = deliveries.of_subject("alert", "A-000000000001")
    details = [a["detail"] for r in rows for a in r["attempts"]]
    assert details and not any(SECRET in d for d in details), details
