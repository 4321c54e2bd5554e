"""Issue 13 item 13: the messages that tell people of an alert change are durable.

They are written in the change's own transaction (the alert store's ``announcements``), sent
from there and deleted only once the broker has them: a crash between the commit and the
publish loses nothing, and a broker away for long blocks nothing. Real Mosquitto; the small
city's registry, so every announcement goes to the grid of its river station ``r1``.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from ingest.alerting import Alerting
from ingest.batcher import Batcher
from ingest.outbox import MqttOutbox
from rules import load_rules
from rules.store import AlertStore, sqlite_url
from rules.transition import Reason, Transition
from tests.integration.test_alert_scenarios import Worker
from tests.integration.test_ingest_e2e import make_settings
from tests.unit.test_alert_store import REGISTRY
from tests.unit.test_rules_support import T0

pytestmark = pytest.mark.integration

RULES = """rules:
- id: river_over_warning
  type: threshold
  name: River above warning level
  name_zh: 水位超警戒
  severity: major
  kinds: [river]
  field: water_level_m
  op: ">"
  attribute: warning_level_m
"""
N = 10_500  # more than the 10,000 the old in-memory outbox held before it blocked the clock


def changes(n: int) -> list[Transition]:
    """One alert opened, then n - 1 repeats of it (each told: renotify 0)."""
    out = [Transition("river_over_warning", "r1", "open", T0, 212.0, "open", Reason.THRESHOLD)]
    out += [
        Transition("river_over_warning", "r1", "update", T0 + i, 212.0, "u", Reason.THRESHOLD)
        for i in range(1, n)
    ]
    return out


async def test_announcements_survive_a_crash_and_an_absent_broker(
    tmp_path: Path, mosquitto: Any
) -> None:
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(RULES)
    settings = make_settings(tmp_path, mosquitto.port)
    store = AlertStore(sqlite_url(tmp_path))
    publisher = MqttOutbox(settings, f"{settings.mqtt_client_id}-alerts", source=store)
    alerting = Alerting(
        load_rules(rules_file, REGISTRY), REGISTRY, store, publisher, Batcher(10**6, 60)
    )
    # The broker is away (the publisher is not running): telling N changes must not block.
    tasks = [asyncio.create_task(alerting.run_store()), asyncio.create_task(alerting.run())]
    try:
        alerting.take(changes(N))
        async with asyncio.timeout(60):
            while alerting.changes < N:  # noqa: ASYNC110 - polling the service's counter
                await asyncio.sleep(0.05)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    assert store.count_announcements() == N
    # The crash: nothing in memory survives, only the file.
    store.close()
    del alerting, publisher

    worker = Worker(mosquitto.port, f"alerts/grid/{REGISTRY.devices['r1'].grid}")
    again = AlertStore(sqlite_url(tmp_path))
    sender = MqttOutbox(settings, f"{settings.mqtt_client_id}-alerts", source=again)
    running = asyncio.create_task(sender.run())
    try:
        async with asyncio.timeout(120):
            while len(worker.received) < N:  # noqa: ASYNC110 - polling the phone's inbox
                await asyncio.sleep(0.1)
        await asyncio.sleep(0.3)
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        worker.client.loop_stop()
        worker.client.disconnect()
    got = worker.received
    assert len(got) == N  # every one, none twice
    assert got[0]["event"]["action"] == "opened"
    assert [m["alert"]["repeat_count"] for m in got] == list(range(N))  # in order
    assert again.count_announcements() == 0
    again.close()
    json.dumps(got[-1])  # a phone can read it
