# ruff: noqa: F811  (the fixtures of test_delivery_sender are imported, then named as arguments)
"""Review of dd83847: the delivery loop under poison jobs, broken config, a hanging platform,
and redirects. Reuses tests/unit/test_delivery_sender.py's server and helpers."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from ingest.alerts.store import AlertStore, sqlite_url
from ingest.delivery.backoff import Backoff
from ingest.delivery.plan import ChannelPlan, Endpoint
from ingest.delivery.store import DeliveryStore
from tests.unit.delivery_city import EchoPlatform, alert, announcements
from tests.unit.test_delivery_sender import (  # noqa: F401  (fixtures)
    NoPeople,
    Server,
    echo_plan,
    sender,
    server,
    stores,
    until,
)


def _payload_with(**alert_over: object) -> bytes:
    a = alert("critical", ("grid/g1",), alert_id="A-0000000000P1")
    body = json.loads(announcements(a)[0][1])
    body["alert"].update(alert_over)
    return json.dumps(body).encode()


@pytest.mark.parametrize(
    "poison",
    [
        # areas not an object: AttributeError in notices._place, outside read_message's try
        lambda: _payload_with(areas=["g1"]),
        # a time out of range: ValueError/OverflowError in notices._local, outside the try
        lambda: json.dumps(
            {
                **json.loads(_payload_with()),
                "event": {"alert_id": "A-0000000000P1", "at_ms": 10**20, "action": "opened"},
            }
        ).encode(),
    ],
    ids=["areas_list", "at_ms_out_of_range"],
)
async def test_one_poison_job_does_not_stop_every_other_delivery(
    server: Server, stores: tuple[AlertStore, DeliveryStore], poison
) -> None:
    alerts, deliveries = stores
    alerts.queue_announcements([("alerts/grid/g1", poison())])
    good = alert("critical", ("grid/g1",), alert_id="A-000000000001")
    alerts.queue_announcements(announcements(good))
    s = sender(deliveries, echo_plan(server.url))
    task = asyncio.create_task(s.run())
    try:
        # The good alert is queued behind the poison one: it must still be told.
        await until(lambda: s.counts.delivered >= 1, timeout_s=3.0)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_poison_job_also_stops_sending_deliveries_already_expanded(
    server: Server, stores: tuple[AlertStore, DeliveryStore]
) -> None:
    alerts, deliveries = stores
    good = alert("critical", ("grid/g1",), alert_id="A-000000000001")
    alerts.queue_announcements(announcements(good))
    plan = echo_plan(server.url)
    from ingest.delivery.dispatch import Expander
    from tests.unit.casecity import registry

    # expanded already (pending), not yet sent
    now_ms = int(time.time() * 1000)  # the sender's clock: a delivery from T0 is long expired
    assert deliveries.dispatch(Expander(lambda: plan, NoPeople(), registry()), now_ms)[1] == 1
    alerts.queue_announcements([("alerts/grid/g1", _payload_with(areas=["g1"]))])
    s = sender(deliveries, plan)
    task = asyncio.create_task(s.run())
    try:
        await until(lambda: s.counts.delivered >= 1, timeout_s=3.0)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_broken_channels_file_at_start_does_not_lose_the_jobs(
    server: Server, stores: tuple[AlertStore, DeliveryStore], tmp_path: Path
) -> None:
    """A channels file with a problem (an env: variable not set, a typo) gives no plan: the
    jobs wait in the queue, not expanded into nothing and deleted, and are told once the
    file is fixed and the service restarted."""
    from ingest.delivery.parts import open_delivery
    from ingest.settings import Settings
    from tests.unit.casecity import registry

    alerts, deliveries = stores
    a = alert("critical", ("grid/g1",), alert_id="A-000000000001")
    alerts.queue_announcements(announcements(a))
    broken_file = tmp_path / "channels.yaml"
    broken_file.write_text("endpoints: {x: {type: nowhere}}\n", encoding="utf-8")
    settings = Settings(data_dir=tmp_path, channels=broken_file)
    parts = open_delivery(settings, registry(), sqlite_url(tmp_path))
    assert parts.problem is not None
    await parts.sender.round()
    assert deliveries.jobs_waiting() == 1  # kept
    fixed = sender(deliveries, echo_plan(server.url))  # restarted with the file fixed
    task = asyncio.create_task(fixed.run())
    try:
        await until(lambda: fixed.counts.delivered >= 1, timeout_s=3.0)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_critical_alert_reaching_no_endpoint_at_all_is_escalated(
    stores: tuple[AlertStore, DeliveryStore],
) -> None:
    """docs/operations.md: a critical notice not delivered on any channel within
    escalate_undelivered_after escalates — also when its audience has no endpoint at all."""
    alerts, deliveries = stores
    a = alert("critical", ("grid/g1",), alert_id="A-000000000001")
    alerts.queue_announcements(announcements(a))
    s = sender(deliveries, ChannelPlan())
    await s.round()
    assert deliveries.jobs_waiting() == 0
    now_ms = int(time.time() * 1000)
    assert deliveries.undelivered_due(now_ms + 11 * 60_000, 600_000) == ["A-000000000001"]
    minor = alert("major", ("grid/g1",), alert_id="A-000000000002")
    alerts.queue_announcements(announcements(minor))
    await s.round()
    assert deliveries.undelivered_due(now_ms + 11 * 60_000, 600_000) == ["A-000000000001"]


class Hanging:
    """One endpoint that never answers, one that answers at once."""

    def __init__(self) -> None:
        self.ok: Counter[str] = Counter()
        self.url = ""

    async def hang(self, request: web.Request) -> web.Response:
        await asyncio.sleep(3600)
        return web.json_response({"ok": True})

    async def send(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.ok[body["key"]] += 1
        return web.json_response({"ok": True})


@pytest.fixture
async def hanging() -> AsyncIterator[Hanging]:
    h = Hanging()
    app = web.Application()
    app.router.add_post("/hang", h.hang)
    app.router.add_post("/send", h.send)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    h.url = f"http://{host}:{port}"
    yield h
    await runner.cleanup()


async def test_one_hanging_platform_does_not_starve_the_other_endpoints(
    hanging: Hanging, stores: tuple[AlertStore, DeliveryStore]
) -> None:
    """The webhook's default rate (600/min) and concurrency/timeout scaled down 4×/10×
    (16 → 4, 10 s → 1 s): one receiver that hangs holds every slot, round after round."""
    alerts, deliveries = stores
    slow = Endpoint("webhook", 600, lambda _p: EchoPlatform(f"{hanging.url}/hang"))
    fast = Endpoint("webhook", 600, lambda _p: EchoPlatform(f"{hanging.url}/send"))
    plan = ChannelPlan(
        endpoints={"slow": slow, "fast": fast},
        recipients={"grid/g1": ("slow",), "county/co1": ("fast",)},
        severities={s: frozenset({"webhook"}) for s in ("critical", "major", "warning", "info")},
    )
    for i in range(20):
        a = alert("critical", ("grid/g1", "county/co1"), alert_id=f"A-0000000000{i:02d}")
        alerts.queue_announcements(announcements(a))
    s = sender(deliveries, plan, timeout_s=1.0, concurrency=4, backoff=Backoff(0.2, 1.0))
    task = asyncio.create_task(s.run())
    try:
        t0 = time.monotonic()
        await until(lambda: sum(hanging.ok.values()) >= 1, timeout_s=20.0)
        took = time.monotonic() - t0
        # The fast endpoint answers in ms: it must not wait for the hanging one's timeouts.
        assert took < 1.0, f"first delivery on the healthy endpoint after {took:.1f} s"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
