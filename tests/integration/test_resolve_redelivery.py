"""Issue 14 items 1 and 2 on the real service (real Mosquitto, real InfluxDB).

1. A person's resolve — through the API, or through ``citysense alerts resolve`` in another
   process — reaches the running service's rule engine: a river that stays above its warning
   level opens a new alert at the next reading (on ec1dc14 it never did).
2. Messages sent again after a resolve (as the broker redelivers after a reconnect) open
   nothing, however many there are; a genuinely new event does.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from devices.registry import Registry, RiverDevice
from ingest.api.tokens import Role, TokenStore, tokens_path
from ingest.service import ServiceState
from ingest.settings import Settings
from rules.alerts import Alert
from tests.integration.test_alerts_e2e import river_readings
from tests.integration.test_ingest_e2e import (
    first_of,
    make_settings,
    now_ms,
    publish,
    running_service,
)
from tests.services import new_database

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
MINUTE = 60_000


async def unresolved(state: ServiceState, rule_id: str, device_id: str) -> list[Alert]:
    assert state.alerting is not None
    store = state.alerting._store
    return [
        a
        for a in await asyncio.to_thread(store.open_alerts)
        if a.rule_id == rule_id and a.device_id == device_id
    ]


async def wait_for(
    state: ServiceState, rule_id: str, device_id: str, other_than: set[str]
) -> Alert:
    """The unresolved alert of (rule, device) that is none of ``other_than``, within 15 s."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        found = [a for a in await unresolved(state, rule_id, device_id) if a.id not in other_than]
        if found:
            return found[0]
        await asyncio.sleep(0.1)
    raise AssertionError(f"no new unresolved {rule_id} alert on {device_id}")


async def judged(state: ServiceState, n: int) -> None:
    """Wait (up to 20 s) until the engine has judged ``n`` messages."""
    assert state.alerting is not None
    for _ in range(200):
        if state.alerting.evaluated >= n:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{state.alerting.evaluated} messages judged, expected {n}")


def cli_resolve(settings: Settings, alert_id: str) -> None:
    """``citysense alerts resolve`` in a process of its own, as an operator would run it."""
    env = {
        **os.environ,
        "CITYSENSE_DATA_DIR": str(settings.data_dir),
        "CITYSENSE_MQTT_PORT": str(settings.mqtt_port),
    }
    done = subprocess.run(
        [sys.executable, "-m", "ingest.cli", "alerts", "resolve", alert_id, "--by", "zhang.wei"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


async def test_a_resolve_by_api_or_cli_reaches_the_running_engine(
    tmp_path: Path, mosquitto: Any, influxdb: Any, registry: Registry
) -> None:
    settings = make_settings(
        tmp_path,
        mosquitto.port,
        influx_url=influxdb.url,
        influx_database=new_database(influxdb.url, "resolve"),
    )
    river = registry.devices[first_of(registry, "river")]
    assert isinstance(river, RiverDevice) and river.warning_level_m is not None
    high = river.warning_level_m + 0.5
    operator, _ = TokenStore.load(tokens_path(settings)).add("duty officer", Role.OPERATOR)
    start = now_ms() - 60 * MINUTE
    seq = 1

    async def readings(first_minute: int, n: int) -> None:
        nonlocal seq
        batch = river_readings(river.id, [high] * n, start + first_minute * MINUTE, MINUTE, seq)
        seq += n
        await asyncio.to_thread(publish, mosquitto.port, batch)

    async with running_service(settings, registry) as state:
        assert state.api_url is not None
        await readings(0, 4)  # above warning for 3 minutes: the rule's `for: 2m` is met
        first = await wait_for(state, "river_over_warning", river.id, set())
        async with httpx.AsyncClient(base_url=state.api_url, timeout=10) as client:
            answer = await client.post(
                f"/alerts/{first.id}/resolve",
                headers={"Authorization": f"Bearer {operator}"},
                json={"note": "checked on site"},
            )
        assert answer.status_code == 200, answer.text
        await asyncio.sleep(2.5)  # the service hears resolves once a second
        await readings(4, 3)  # still above: opens again (the rule's `for: 2m` anew)
        second = await wait_for(state, "river_over_warning", river.id, {first.id})

        await asyncio.to_thread(cli_resolve, settings, second.id)
        await asyncio.sleep(2.5)
        await readings(7, 3)
        third = await wait_for(state, "river_over_warning", river.id, {first.id, second.id})
    assert first.opened_ms < second.opened_ms < third.opened_ms


async def test_events_sent_again_after_a_resolve_open_nothing(
    tmp_path: Path, mosquitto: Any, influxdb: Any, registry: Registry
) -> None:
    settings = make_settings(
        tmp_path,
        mosquitto.port,
        influx_url=influxdb.url,
        influx_database=new_database(influxdb.url, "redelivery"),
    )
    gate = first_of(registry, "gate")
    operator, _ = TokenStore.load(tokens_path(settings)).add("duty officer", Role.OPERATOR)
    start = now_ms() - 30 * MINUTE
    events = [
        (
            f"iot/gate/{gate}/event",
            json.dumps({"ts": start + i * 1000, "seq": 1000 + i, "event": "forced_open"}).encode(),
        )
        for i in range(300)  # far more than one device's 64 remembered messages on ec1dc14
    ]
    async with running_service(settings, registry) as state:
        assert state.api_url is not None and state.alerting is not None
        await asyncio.to_thread(publish, mosquitto.port, events)
        first = await wait_for(state, "gate_forced_open", gate, set())
        await judged(state, len(events))
        async with httpx.AsyncClient(base_url=state.api_url, timeout=10) as client:
            answer = await client.post(
                f"/alerts/{first.id}/resolve", headers={"Authorization": f"Bearer {operator}"}
            )
        assert answer.status_code == 200, answer.text
        await asyncio.sleep(2.5)
        changes = state.alerting.changes
        await asyncio.to_thread(publish, mosquitto.port, events)  # all of them again
        await judged(state, 2 * len(events))
        await asyncio.sleep(1)
        assert await unresolved(state, "gate_forced_open", gate) == []
        assert state.alerting.changes == changes
        # A new event (new seq, newer time) is news: it opens a new alert.
        new = {"ts": start + 400_000, "seq": 1300, "event": "forced_open"}
        await asyncio.to_thread(
            publish, mosquitto.port, [(f"iot/gate/{gate}/event", json.dumps(new).encode())]
        )
        second = await wait_for(state, "gate_forced_open", gate, {first.id})
    assert second.opened_ms == start + 400_000
