"""The HTTP API in-process over a real InfluxDB database: the line protocol given is written
first, then an ASGI client on the app (no rules, an empty alert store in ``tmp``). Shared by
the read-API integration tests (events, quality, NGSI-LD)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import httpx

from devices.registry import Registry
from ingest.alerts.store import AlertStore, sqlite_url
from ingest.api.app import create_app
from ingest.api.context import ApiContext
from ingest.api.tokens import TokenStore
from ingest.settings import Settings
from ingest.sinks.deadletters import DeadLetterStore
from rules.loader import parse_rules


@contextlib.asynccontextmanager
async def api_over_influx(
    influx_url: str,
    database: str,
    registry: Registry,
    tokens: TokenStore,
    tmp: Path,
    lines: str,
    base_url: str = "http://api",
) -> AsyncIterator[httpx.AsyncClient]:
    """``lines`` written to ``database`` (precision ms), then a client on the API over it."""
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{influx_url}/write",
            params={"db": database, "precision": "ms"},
            data=lines.encode(),
        ) as resp:
            assert resp.status == 204, await resp.text()
        ctx = ApiContext(
            settings=Settings(data_dir=tmp, influx_url=influx_url, influx_database=database),
            registry=registry,
            rules=parse_rules({"rules": []}, "<test>", registry),
            rules_path=tmp / "rules.yaml",
            alert_store=AlertStore(sqlite_url(tmp)),
            dead_letters=DeadLetterStore(tmp / "deadletters.sqlite"),
            tokens=tokens,
            http=http,
        )
        transport = httpx.ASGITransport(app=create_app(ctx))
        async with httpx.AsyncClient(transport=transport, base_url=base_url, timeout=30) as c:
            yield c
