"""A device's measured clock skew, on the real service: ``/devices/{id}`` shows
``clock_skew_s`` and ``/metrics`` counts the devices past CITYSENSE_CLOCK_SKEW_WARN_S
(issue 14 item 3). Real Mosquitto, InfluxDB and the ingest path; messages published by paho."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from devices.registry import Registry
from ingest.api.tokens import Role, TokenStore, tokens_path
from tests.integration.test_ingest_e2e import (
    make_settings,
    now_ms,
    publish,
    running_service,
    settle,
)
from tests.services import new_database

pytestmark = pytest.mark.integration

SLOW_MS = 240_000  # the slow station's clock is 4 minutes behind


async def test_devices_show_their_clock_skew_and_metrics_count_the_skewed(
    tmp_path: Path, mosquitto: Any, influxdb: Any, registry: Registry
) -> None:
    settings = make_settings(
        tmp_path,
        mosquitto.port,
        influx_url=influxdb.url,
        influx_database=new_database(influxdb.url, "skew"),
    )
    operator, _ = TokenStore.load(tokens_path(settings)).add("duty officer", Role.OPERATOR)
    auth = {"Authorization": f"Bearer {operator}"}
    rivers = [d.id for d in registry.devices.values() if d.kind == "river"][:3]
    slow, on_time, other = rivers
    gate = next(d.id for d in registry.devices.values() if d.kind == "gate")
    async with running_service(settings, registry) as state:
        now = now_ms()

        def reading(device: str, ts: int, seq: int) -> tuple[str, bytes]:
            body = {"ts": ts, "seq": seq, "water_level_m": 208.0}
            return f"iot/river/{device}/telemetry", json.dumps(body).encode()

        # On-time devices first, so the read clock sees no backlog in the slow station.
        messages = [reading(on_time, now, 1), reading(other, now, 1)]
        # A status without ts is stamped on receipt: it says nothing of the gate's clock.
        messages.append((f"iot/gate/{gate}/status", json.dumps({"online": True}).encode()))
        messages += [reading(slow, now - SLOW_MS - (2 - i) * 1000, 1 + i) for i in range(3)]
        await asyncio.to_thread(publish, mosquitto.port, messages)
        await settle(state, len(messages))
        assert sum(state.ledger.rejected.values()) == 0  # the untimed status was taken too
        assert state.api_url is not None
        async with httpx.AsyncClient(base_url=state.api_url, timeout=10) as client:

            async def skew_of(device: str) -> float | None:
                r = await client.get(f"/devices/{device}", headers=auth)
                assert r.status_code == 200, r.text
                value: float | None = r.json()["clock_skew_s"]
                return value

            measured = await skew_of(slow)
            # stamp − arrival = skew − delay: at most the true skew, by the way's delay.
            assert measured is not None and -SLOW_MS / 1000 - 10 < measured <= -SLOW_MS / 1000
            fine = await skew_of(on_time)
            assert fine is not None and -10 < fine <= 0
            assert await skew_of(gate) is None
            metrics = (await client.get("/metrics", headers=auth)).text
            assert "citysense_devices_clock_skewed 1.0" in metrics
