"""A few seconds of the simulator through the real service: stored counts equal sent counts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from devices.kinds import Channel, Kind
from devices.registry import load_registry
from ingest.intake.lineprotocol import measurement_of
from ingest.settings import InfluxDialect
from simulator import MqttTarget, SimulationConfig, run_simulation
from tests.brokerauth import DEV_SECRET, clear_retained_statuses
from tests.integration.test_ingest_e2e import (
    REGISTRY_FILE,
    make_settings,
    running_service,
    settle,
)
from tests.services import influx_query, new_database

pytestmark = pytest.mark.integration


async def test_simulated_city_is_stored_message_for_message(
    tmp_path: Path, mosquitto: Any, influxdb: Any
) -> None:
    registry = load_registry(REGISTRY_FILE)
    database = new_database(influxdb.url, "sim")
    settings = make_settings(
        tmp_path,
        mosquitto.port,
        influx_url=influxdb.url,
        influx_database=database,
        influx_dialect=InfluxDialect.V1,
    )
    config = SimulationConfig(
        rate=150, duration=4, seed=7, scenarios=("accident", "tailgating"), scenario_at=1
    )
    try:
        async with running_service(settings, registry) as state:
            report = await run_simulation(
                config, registry, MqttTarget(port=mosquitto.port, dev_secret=DEV_SECRET)
            )
            await settle(state, report.total)
            assert state.ledger.rejected == {}, state.ledger.rejected
            assert state.ledger.written_total == report.total
    finally:
        clear_retained_statuses(mosquitto.port, registry)

    assert report.total >= 400  # 150 msg/s for 4 s, give or take the start
    for kind in Kind:
        for channel in (Channel.TELEMETRY, Channel.EVENT):
            sent = report.count(kind, channel)
            if sent == 0:
                continue
            measurement = measurement_of(kind, channel)
            series = influx_query(influxdb.url, database, f"SELECT count(seq) FROM {measurement}")
            assert series[0]["values"][0][1] == sent, (measurement, sent, series)
    statuses = influx_query(influxdb.url, database, "SELECT count(online) FROM device_status")
    assert statuses[0]["values"][0][1] == report.count(channel=Channel.STATUS)
    accidents = influx_query(
        influxdb.url, database, "SELECT count(seq) FROM road_event WHERE event = 'accident'"
    )
    assert accidents[0]["values"][0][1] >= 1
