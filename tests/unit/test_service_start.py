"""Starting the service: what it refuses, and a start that waits can still be stopped."""

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ingest.ops.processes import free_port
from ingest.service import StartRefused, refuse_unsafe, serve
from ingest.settings import Settings
from rules import load_rules
from tests.unit.test_payloads import REGISTRY


async def test_stop_while_influxdb_is_unreachable(tmp_path: Path) -> None:
    settings = Settings(influx_url=f"http://127.0.0.1:{free_port()}", data_dir=tmp_path)
    stop = asyncio.Event()
    task = asyncio.create_task(serve(settings, REGISTRY, stop))
    await asyncio.sleep(0.8)  # at least one failed /ping and a backoff wait
    assert not task.done()
    stop.set()
    state = await asyncio.wait_for(task, 2)
    assert state.ledger.received == 0 and state.consumer is None


def test_a_share_group_with_rules_is_refused_at_start(tmp_path: Path) -> None:
    """Issue 13 item 14: round-robin delivery would show each rule half of a device's story.

    `citysense serve` as a process: it must exit non-zero before touching the broker or
    InfluxDB (both point at closed ports here), naming the setting.
    """
    env = {
        **os.environ,
        "CITYSENSE_MQTT_SHARE_GROUP": "ingest",
        "CITYSENSE_MQTT_PORT": str(free_port()),
        "CITYSENSE_INFLUX_URL": f"http://127.0.0.1:{free_port()}",
        "CITYSENSE_DATA_DIR": str(tmp_path),
        "CITYSENSE_API_ENABLED": "false",
    }
    done = subprocess.run(
        [sys.executable, "-m", "ingest.cli", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert "CITYSENSE_MQTT_SHARE_GROUP" in done.stderr and "rules" in done.stderr


def test_a_share_group_without_rules_may_start(tmp_path: Path) -> None:
    """Processes with an empty rule file only store readings: splitting them is harmless."""
    empty = tmp_path / "rules.yaml"
    empty.write_text("rules: []\n")
    settings = Settings(mqtt_share_group="ingest", rules=empty, data_dir=tmp_path)
    refuse_unsafe(settings, load_rules(empty, REGISTRY))  # does not raise
    with pytest.raises(StartRefused):
        refuse_unsafe(
            Settings(mqtt_share_group="ingest", data_dir=tmp_path),
            load_rules(Settings().rules, REGISTRY),
        )
