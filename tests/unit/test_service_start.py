"""A service waiting for an absent InfluxDB still stops when asked."""

import asyncio
from pathlib import Path

from ingest.service import serve
from ingest.settings import Settings
from ingest.stack import free_port
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
