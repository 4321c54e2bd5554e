"""The API's write rate limit, CORS and body limits, on real stores in a temporary directory."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import httpx
import pytest

from devices.registry import parse_registry
from ingest.alerts.store import AlertStore, sqlite_url
from ingest.api.app import MAX_BODY_BYTES, create_app
from ingest.api.context import ApiContext
from ingest.api.ratelimit import TokenBucket
from ingest.api.tokens import Role, TokenStore
from ingest.settings import Settings
from ingest.sinks.deadletters import DeadLetterStore
from rules.loader import parse_rules
from tests.unit.smallcity import SMALL_AREAS, SMALL_DEVICES

RULE = "rules:\n- id: gate_forced\n  type: event\n  severity: major\n  kinds: [gate]\n"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Api:
    client: httpx.AsyncClient
    clock: Clock
    operator: str
    worker: str


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    registry = parse_registry({"areas": SMALL_AREAS, "devices": SMALL_DEVICES})
    tokens = TokenStore.load(tmp_path / "tokens.yaml")
    operator, _ = tokens.add("duty officer", Role.OPERATOR)
    worker, _ = tokens.add("li.na", Role.GRID_WORKER, ["g"])
    clock = Clock()
    async with aiohttp.ClientSession() as http:
        ctx = ApiContext(
            settings=Settings(data_dir=tmp_path),
            registry=registry,
            rules=parse_rules({"rules": []}, "<test>", registry),
            rules_path=tmp_path / "rules.yaml",
            alert_store=AlertStore(sqlite_url(tmp_path)),
            dead_letters=DeadLetterStore(tmp_path / "deadletters.sqlite"),
            tokens=tokens,
            http=http,
        )
        app = create_app(ctx, TokenBucket(per_minute=6, burst=3, clock=clock))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            yield Api(client, clock, operator, worker)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_writes_past_the_burst_get_429_with_retry_after(api: Api) -> None:
    ack = "/alerts/no-such-alert/ack"
    for _ in range(3):  # the burst: the limiter lets them through to the route's own 404
        response = await api.client.post(ack, headers=bearer(api.worker))
        assert response.status_code == 404
    limited = await api.client.post(ack, headers=bearer(api.worker))
    assert limited.status_code == 429
    assert limited.headers["Retry-After"] == "10"  # 6/min: one every 10 s
    error = limited.json()["error"]
    assert error["code"] == "rate_limited"
    assert error["detail"] == {"retry_after_s": 10}
    # Resolve shares the bucket; the operator has a bucket of its own; reads are not limited.
    resolve = await api.client.post("/alerts/x/resolve", headers=bearer(api.worker))
    assert resolve.status_code == 429
    assert (await api.client.post(ack, headers=bearer(api.operator))).status_code == 404
    assert (await api.client.get("/alerts", headers=bearer(api.worker))).status_code == 200
    api.clock.now += 10  # one request refilled
    assert (await api.client.post(ack, headers=bearer(api.worker))).status_code == 404
    assert (await api.client.post(ack, headers=bearer(api.worker))).status_code == 429


async def test_rule_validation_is_limited_per_operator_and_404_for_workers(api: Api) -> None:
    async def validate(token: str) -> httpx.Response:
        headers = {**bearer(token), "Content-Type": "application/yaml"}
        return await api.client.post("/rules/validate", content=RULE, headers=headers)

    assert [(await validate(api.operator)).status_code for _ in range(4)] == [200] * 3 + [429]
    # A grid worker is told the route does not exist, and spends nothing finding out.
    assert [(await validate(api.worker)).status_code for _ in range(5)] == [404] * 5
    ack = await api.client.post("/alerts/x/ack", headers=bearer(api.worker))
    assert ack.status_code == 404


async def test_an_unknown_token_gets_401_not_429(api: Api) -> None:
    wrong = "cst_000000000000_" + "A" * 43
    codes = [(await api.client.post("/alerts/x/ack", headers=bearer(wrong))).status_code]
    codes += [(await api.client.post("/alerts/x/ack")).status_code for _ in range(5)]
    assert codes == [401] * 6


async def test_cors_is_closed(api: Api) -> None:
    preflight = await api.client.options(
        "/alerts/x/ack",
        headers={
            "Origin": "https://evil.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization",
        },
    )
    assert "access-control-allow-origin" not in preflight.headers
    assert "access-control-allow-headers" not in preflight.headers
    simple = await api.client.get(
        "/alerts", headers={**bearer(api.operator), "Origin": "https://evil.example"}
    )
    assert simple.status_code == 200
    assert "access-control-allow-origin" not in simple.headers


async def test_a_chunked_body_over_the_limit_is_cut_off_with_413(api: Api) -> None:
    sent = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(40):  # 2.5 MiB in all, with no Content-Length
            sent += 65536
            yield b"#" * 65536

    headers = {**bearer(api.operator), "Content-Type": "application/yaml"}
    response = await api.client.post("/rules/validate", content=chunks(), headers=headers)
    assert response.status_code == 413
    assert response.json()["error"] == {
        "code": "too_large",
        "message": f"bodies are limited to {MAX_BODY_BYTES} bytes",
        "detail": None,
    }
    assert sent < 40 * 65536  # not read to the end


async def test_a_declared_body_over_the_limit_is_refused_before_reading(api: Api) -> None:
    headers = {**bearer(api.operator), "Content-Type": "application/yaml"}
    body = b"#" * (MAX_BODY_BYTES + 1)
    response = await api.client.post("/rules/validate", content=body, headers=headers)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "too_large"


@pytest.fixture
def all_logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    with caplog.at_level(logging.DEBUG):
        yield caplog


async def test_no_token_text_reaches_the_logs(api: Api, all_logs: pytest.LogCaptureFixture) -> None:
    typo = api.operator[:-1] + ("A" if api.operator[-1] != "A" else "B")
    for token in (api.operator, api.worker, typo, api.operator + "x", "garbage token"):
        for _ in range(5):
            await api.client.post("/alerts/x/ack", headers=bearer(token))
        await api.client.get("/alerts?limit=0", headers=bearer(token))  # 422
        await api.client.get("/devices", headers=bearer(token))
    secrets = {api.operator, api.worker, typo, api.operator.split("_")[-1], api.worker[-43:]}
    for record in all_logs.records:
        text = record.getMessage() + str(record.exc_info or "")
        for secret in secrets:
            assert secret not in text, record
