"""The simulator's field stations through the real gateway: ``run_simulation --protocol
hj212|sl651`` → ``citysense gateway`` (a process, SIGKILLed and restarted mid-run) → Mosquitto
→ citysense → InfluxDB. Every frame the gateway answered is stored, once; the ones caught by
the kill are resent over a new connection and none is given up."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from devices.registry import load_registry
from simulator import GatewayTarget, MqttTarget, SimulationConfig, run_simulation
from tests.integration.test_gateway import stack, stored
from tests.integration.test_ingest_e2e import REGISTRY_FILE

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(("protocol", "duration"), [("hj212", 8.0), ("sl651", 6.0)])
async def test_stations_survive_a_killed_gateway(
    tmp_path: Path, mosquitto: Any, influxdb: Any, protocol: str, duration: float
) -> None:
    city = load_registry(REGISTRY_FILE)
    async with stack(tmp_path, mosquitto, influxdb, city, protocol) as (gateway, database):
        config = SimulationConfig(protocols=(protocol,), duration=duration, rate=20, seed=3)
        target = GatewayTarget(port=gateway.port)
        run = asyncio.create_task(
            run_simulation(config, city, MqttTarget(port=1), {protocol: target})
        )
        await asyncio.sleep(2.5)
        gateway.kill()  # SIGKILL: connections reset, nothing answered
        await asyncio.sleep(1.5)
        await asyncio.to_thread(gateway.start)
        report = await run
        counts = report.stations[protocol]
        devices = [d.id for d in city.stations_of(protocol).values()]
        rows: dict[str, int] = {}
        for _ in range(50):  # the last answered frames are on their way to InfluxDB
            rows = {d: len(stored(influxdb.url, database, d, "*")) for d in devices}
            if sum(rows.values()) >= counts.answered:
                break
            await asyncio.sleep(0.2)
    assert counts.unanswered == 0 and report.failed == 0, report.table()
    assert counts.sent == counts.answered > 0
    assert sum(rows.values()) == counts.answered, (rows, report.table())
    assert set(report.last_seq) == set(devices)
    if protocol == "hj212":  # a frame every 1.25 s: some fell into the ~2.5 s the gateway was away
        assert counts.resent >= 1 and report.reconnects >= 1, report.table()
