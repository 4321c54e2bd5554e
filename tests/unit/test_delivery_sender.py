"""Issue 19: the sender against a small platform server of our own (aiohttp, in process) on
the alert store's SQLite file: delivered once with a receipt per attempt, retries after 5xx
with backoff, the platform's wait honoured, failures and expiry recorded, the rate limit, and
a critical alert nobody was reached for escalated and flagged."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from aiohttp import web

from devices.kinds import Kind, Level
from ingest.alerts.store import AlertStore, sqlite_url
from ingest.delivery.backoff import Backoff
from ingest.delivery.plan import ChannelPlan, Endpoint
from ingest.delivery.sender import Sender
from ingest.delivery.store import DeliveryStore
from rules.model import Severity
from rules.transition import Reason, Transition
from tests.unit.delivery_city import T0, EchoPlatform, alert, announcements, payload

AREAS = {Level.GRID: "g1", Level.VILLAGE: "v1", Level.TOWNSHIP: "t1", Level.COUNTY: "co1"}


class Server:
    """Answers ``status`` (200: ``{"ok": true}``) and counts what it accepted per key."""

    def __init__(self) -> None:
        self.status = 200
        self.refused: set[str] = set()  # subject ids answered 500 whatever ``status`` is
        self.accepted: Counter[str] = Counter()
        self.requests = 0
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        body = await request.json()
        if self.status != 200 or body["subject_id"] in self.refused:
            status = self.status if self.status != 200 else 500
            return web.json_response({"error": "down"}, status=status)
        self.accepted[body["key"]] += 1
        return web.json_response({"ok": True})


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    s = Server()
    app = web.Application()
    app.router.add_post("/send", s.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    s.url = f"http://{host}:{port}/send"
    yield s
    await runner.cleanup()


def echo_plan(url: str, rate: int = 600, after_s: float = 600.0) -> ChannelPlan:
    """Every recipient of the tests' city on one endpoint of the echo platform."""
    ep = Endpoint("webhook", rate, lambda _phone: EchoPlatform(url, rate_per_minute=rate))
    return ChannelPlan(
        endpoints={"echo": ep},
        recipients={"grid/g1": ("echo",), "county/co1": ("echo",), "operators": ("echo",)},
        severities={s: frozenset({"webhook"}) for s in ("critical", "major", "warning", "info")},
        escalate_undelivered_after_s=after_s,
    )


class NoPeople:
    def holding(self, key: str, registry: object) -> list[object]:
        return []


def sender(store: DeliveryStore, plan: ChannelPlan, **kw: object) -> Sender:
    from ingest.delivery.dispatch import Expander
    from tests.unit.casecity import registry

    return Sender(
        store,
        Expander(lambda: plan, NoPeople(), registry()),
        lambda: plan,
        tick_s=0.02,
        **kw,  # type: ignore[arg-type]
    )


async def until(check: Callable[[], bool], timeout_s: float = 10.0) -> None:
    end = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < end, "timed out"
        await asyncio.sleep(0.02)


@pytest.fixture
def stores(tmp_path: Path) -> tuple[AlertStore, DeliveryStore]:
    url = sqlite_url(tmp_path)
    return AlertStore(url), DeliveryStore(url)


async def test_each_delivery_is_sent_once_and_its_attempt_recorded(
    server: Server, stores: tuple[AlertStore, DeliveryStore]
) -> None:
    alerts, deliveries = stores
    for i in range(5):
        a = alert("critical", ("grid/g1", "county/co1"), alert_id=f"A-00000000000{i}")
        alerts.queue_announcements(announcements(a))
    s = sender(deliveries, echo_plan(server.url))
    task = asyncio.create_task(s.run())
    await until(lambda: s.counts.delivered == 10)
    task.cancel()
    assert sorted(server.accepted.values()) == [1] * 10 and server.requests == 10
    shown = deliveries.of_subject("alert", "A-000000000003")
    assert [d["state"] for d in shown] == ["delivered", "delivered"]
    assert all(len(d["attempts"]) == 1 for d in shown)
    receipt = shown[0]["attempts"][0]
    assert receipt["http_status"] == 200 and receipt["outcome"] == "delivered"
    assert receipt["code"] == "0" and receipt["at_ms"] > 0


async def test_a_platform_down_is_retried_with_backoff_then_delivered_once(
    server: Server, stores: tuple[AlertStore, DeliveryStore]
) -> None:
    alerts, deliveries = stores
    server.status = 500
    alerts.queue_announcements(announcements(alert("major")))
    s = sender(deliveries, echo_plan(server.url), backoff=Backoff(base_s=0.05, max_s=0.2))
    task = asyncio.create_task(s.run())
    await until(lambda: s.counts.retried >= 4)
    server.status = 200
    await until(lambda: s.counts.delivered == 1)
    task.cancel()
    assert list(server.accepted.values()) == [1]
    (shown,) = deliveries.of_subject("alert", alert().id)
    outcomes = [a["outcome"] for a in shown["attempts"]]
    assert outcomes[-1] == "delivered" and set(outcomes[:-1]) == {"retry"}
    assert all(a["http_status"] == 500 for a in shown["attempts"][:-1])
    times = [a["at_ms"] for a in shown["attempts"]]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(g >= 20 for g in gaps)  # at least half the first step (50 ms) apart, roughly


async def test_a_refusal_fails_for_good_and_an_old_delivery_expires(
    server: Server, stores: tuple[AlertStore, DeliveryStore]
) -> None:
    alerts, deliveries = stores
    server.status = 400
    alerts.queue_announcements(announcements(alert("major", alert_id="A-000000000001")))
    s = sender(deliveries, echo_plan(server.url))
    task = asyncio.create_task(s.run())
    await until(lambda: s.counts.failed == 1)
    task.cancel()
    (shown,) = deliveries.of_subject("alert", "A-000000000001")
    assert shown["state"] == "failed" and shown["attempts"][0]["http_status"] == 400
    # A platform down for longer than the max age: given up as expired.
    server.status = 503
    alerts.queue_announcements(announcements(alert("major", alert_id="A-000000000002")))
    s = sender(
        deliveries, echo_plan(server.url), backoff=Backoff(base_s=0.05, max_s=0.1, max_age_s=0.3)
    )
    task = asyncio.create_task(s.run())
    await until(lambda: s.counts.expired >= 1)
    task.cancel()
    (shown,) = deliveries.of_subject("alert", "A-000000000002")
    assert shown["state"] == "expired" and shown["attempts"][-1]["outcome"] == "expired"


async def test_the_endpoint_rate_is_kept(
    server: Server, stores: tuple[AlertStore, DeliveryStore]
) -> None:
    alerts, deliveries = stores
    for i in range(6):
        alerts.queue_announcements(announcements(alert("info", alert_id=f"A-00000000001{i}")))
    s = sender(deliveries, echo_plan(server.url, rate=20))  # 2 at once, then one each ~3.2 s
    task = asyncio.create_task(s.run())
    await asyncio.sleep(1.0)
    task.cancel()
    assert server.requests == 2 and deliveries.counts() == {"delivered": 2, "pending": 4}


async def test_a_critical_alert_nobody_was_reached_for_is_escalated_and_flagged(
    server: Server, stores: tuple[AlertStore, DeliveryStore]
) -> None:
    alerts, deliveries = stores
    opened = alerts.apply(
        Transition("river_over_guarantee", "r1", "open", T0, 214.0, "x", Reason.THRESHOLD),
        severity=Severity.CRITICAL,
        kind=Kind.RIVER,
        areas=AREAS,
    )
    assert opened is not None
    a = opened[0]
    server.refused.add(a.id)  # its platform is down for it throughout
    alerts.queue_announcements([("alerts/grid/g1", payload(a)), ("alerts/county/co1", payload(a))])
    reached = alert("critical", alert_id="A-0000000000ff")
    alerts.queue_announcements(announcements(reached))
    s = sender(deliveries, echo_plan(server.url, after_s=0.5), backoff=Backoff(0.05, 0.1))
    task = asyncio.create_task(s.run())
    await until(lambda: s.counts.escalated == 1)
    await asyncio.sleep(0.3)  # once only
    task.cancel()
    assert s.counts.escalated == 1
    flag = deliveries.undelivered_flag(a.id)
    assert flag is not None and flag["detail"].startswith("undelivered")
    history = alerts.history(a.id)
    assert [e.action for e in history] == ["opened", "escalated"]
    assert history[-1].detail.startswith("undelivered")
    told = [(t, json.loads(p).get("undelivered")) for _, t, p in alerts.pending_announcements()]
    assert ("alerts/operators", True) in told
    assert deliveries.undelivered_flag(reached.id) is None
    # The operators' own endpoint is told of it too (here as down for it as the others).
    await asyncio.to_thread(deliveries.dispatch, s._expand, T0)
    shown = deliveries.of_subject("alert", a.id)
    assert [d["recipient"] for d in shown] == ["grid/g1", "county/co1", "operators"]


async def test_an_acknowledged_alert_is_not_escalated(
    server: Server, stores: tuple[AlertStore, DeliveryStore]
) -> None:
    alerts, deliveries = stores
    opened = alerts.apply(
        Transition("river_over_guarantee", "r1", "open", T0, 214.0, "x", Reason.THRESHOLD),
        severity=Severity.CRITICAL,
        kind=Kind.RIVER,
        areas=AREAS,
    )
    assert opened is not None
    a = opened[0]
    alerts.acknowledge(a.id, "li.na", T0 + 1000)
    server.refused.add(a.id)
    alerts.queue_announcements([("alerts/grid/g1", payload(a))])
    s = sender(deliveries, echo_plan(server.url, after_s=0.2), backoff=Backoff(0.05, 0.1))
    task = asyncio.create_task(s.run())
    await asyncio.sleep(1.5)
    task.cancel()
    assert s.counts.escalated == 0 and deliveries.undelivered_flag(a.id) is None
    assert [e.action for e in alerts.history(a.id)] == ["opened", "acknowledged"]
