"""``GET /deliveries?alert=|case=`` (issue 19): who was reached how and when, to those who may
see the alert or case (operators: all; a person: what their posts see; 404 otherwise)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest

from devices.kinds import Kind
from ingest.alerts.store import AlertStore, sqlite_url
from ingest.api.app import create_app
from ingest.api.context import ApiContext
from ingest.api.ratelimit import TokenBucket
from ingest.api.tokens import Role, TokenStore
from ingest.cases.store import CaseStore
from ingest.delivery.dispatch import Expander
from ingest.delivery.store import Attempt, DeliveryStore
from ingest.ops.processes import free_port
from ingest.settings import Settings
from ingest.sinks.deadletters import DeadLetterStore
from rules.loader import parse_rules
from rules.model import Severity
from rules.transition import Reason, Transition
from tests.unit.casecity import case_config, people, registry
from tests.unit.delivery_city import T0, payload, plan
from tests.unit.test_case_store import PATHS, RULES


@dataclass
class Api:
    client: httpx.AsyncClient
    tokens: dict[str, str]
    alerts: AlertStore
    deliveries: DeliveryStore
    expand: Expander

    async def get(self, who: str, **params: Any) -> httpx.Response:
        auth = {"Authorization": f"Bearer {self.tokens[who]}"}
        return await self.client.get("/deliveries", params=params, headers=auth)


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    reg = registry()
    who = people(reg)
    tokens = TokenStore.load(tmp_path / "tokens.yaml")
    made = {"duty": tokens.add("duty officer", Role.OPERATOR)[0]}
    for name in ("li.na", "zhao.min"):
        made[name] = tokens.add(name, Role.PERSON)[0]
    url = sqlite_url(tmp_path)
    alerts = AlertStore(url)
    deliveries = DeliveryStore(url)
    settings = Settings(data_dir=tmp_path, influx_url=f"http://127.0.0.1:{free_port()}")
    async with aiohttp.ClientSession() as http:
        ctx = ApiContext(
            settings=settings,
            registry=reg,
            rules=parse_rules(RULES, "<test>", reg),
            rules_path=tmp_path / "rules.yaml",
            alert_store=alerts,
            dead_letters=DeadLetterStore(tmp_path / "deadletters.sqlite"),
            tokens=tokens,
            http=http,
            people=who,
            cases=CaseStore(url),
            case_config=case_config(),
        )
        app = create_app(ctx, TokenBucket(per_minute=100_000, burst=10_000))
        app.state.deliveries = deliveries
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as c:
            yield Api(c, made, alerts, deliveries, Expander(lambda: plan(reg, who), who, reg))


async def test_who_was_reached_how_and_when(api: Api) -> None:
    opened = api.alerts.apply(
        Transition("river_over_warning", "r1", "open", T0, 214.0, "x", Reason.THRESHOLD),
        severity=Severity.CRITICAL,
        kind=Kind.RIVER,
        areas=PATHS["g1"],
    )
    assert opened is not None
    a = opened[0]
    api.alerts.queue_announcements([("alerts/grid/g1", payload(a))])
    assert api.deliveries.dispatch(api.expand, T0) == (1, 2)
    first = api.deliveries.of_subject("alert", a.id)[0]
    api.deliveries.record(
        first["id"], Attempt(T0 + 5, 120, 500, "500", "busy", "retry"), "pending", T0 + 2000
    )
    api.deliveries.record(
        first["id"], Attempt(T0 + 2100, 80, 200, "0", "ok", "delivered"), "delivered", T0 + 2100
    )
    for who in ("duty", "li.na"):
        r = await api.get(who, alert=a.id)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["subject"] == "alert" and body["undelivered"] is False
        shown = {
            (d["recipient"], d["channel"], d["endpoint"], d["state"]) for d in body["deliveries"]
        }
        assert shown == {
            ("person/li.na", "wecom", "grid-wecom", "delivered"),
            ("person/li.na", "sms", "gw", "pending"),
        }
        tried = next(d for d in body["deliveries"] if d["state"] == "delivered")["attempts"]
        assert [(t["at_ms"], t["http_status"], t["code"], t["outcome"]) for t in tried] == [
            (T0 + 5, 500, "500", "retry"),
            (T0 + 2100, 200, "0", "delivered"),
        ]
    r = await api.get("zhao.min", alert=a.id)  # another grid's worker
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert (await api.get("duty", alert="A-nothere")).status_code == 404
    assert (await api.get("duty")).status_code == 422
    assert (await api.get("duty", alert=a.id, case="C-1")).status_code == 422


async def test_a_cases_deliveries_to_those_who_see_the_case(api: Api) -> None:
    r = await api.client.post(
        "/cases",
        json={"title": "井盖缺失", "description": "人行道", "grid": "g1"},
        headers={"Authorization": f"Bearer {api.tokens['li.na']}"},
    )
    assert r.status_code == 201, r.text
    case_id = r.json()["case"]["id"]
    jobs, made = api.deliveries.dispatch(api.expand, T0)
    assert jobs >= 1 and made == 1  # li.na's robot: a warning case (cases/person, cases/grid)
    r = await api.get("li.na", case=case_id)
    assert r.status_code == 200, r.text
    assert [(d["recipient"], d["channel"]) for d in r.json()["deliveries"]] == [
        ("person/li.na", "wecom")
    ]
    assert (await api.get("zhao.min", case=case_id)).status_code == 404


async def test_the_operators_page_lists_open_alerts_nobody_was_reached_for(api: Api) -> None:
    opened = api.alerts.apply(
        Transition("river_over_warning", "r1", "open", T0, 214.0, "x", Reason.THRESHOLD),
        severity=Severity.CRITICAL,
        kind=Kind.RIVER,
        areas=PATHS["g1"],
    )
    assert opened is not None
    a = opened[0]
    api.alerts.queue_announcements([("alerts/grid/g1", payload(a))])
    api.deliveries.dispatch(api.expand, T0)

    async def listed(who: str) -> httpx.Response:
        auth = {"Authorization": f"Bearer {api.tokens[who]}"}
        return await api.client.get("/deliveries/undelivered", headers=auth)

    assert (await listed("duty")).json() == []
    assert api.deliveries.undelivered_due(T0 + 11 * 60_000, 10 * 60_000) == [a.id]
    assert api.deliveries.flag_undelivered(a.id, T0 + 11 * 60_000, "nobody", lambda _a, _e: [])
    shown = (await listed("duty")).json()
    assert [(r["alert"], r["state"], r["detail"]) for r in shown] == [(a.id, "open", "nobody")]
    refused = await listed("li.na")
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "operators_only"
    api.alerts.acknowledge(a.id, "duty officer", T0 + 12 * 60_000)
    assert (await listed("duty")).json() == []  # someone knows now
