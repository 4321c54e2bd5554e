"""Dialect detection from /ping, against the real InfluxDB 1.6 and a stand-in for 2.x."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from ingest.ops.processes import ManagedProcess
from ingest.settings import InfluxDialect, Settings
from ingest.sinks.writer import InfluxV1Sink, InfluxV2Sink, Rejected, detect_dialect, open_sink

pytestmark = pytest.mark.integration


async def test_influxdb_1_6_is_written_through_write(influxdb: ManagedProcess) -> None:
    assert await detect_dialect(influxdb.url) is InfluxDialect.V1
    sink = await open_sink(Settings(influx_url=influxdb.url))
    try:
        assert isinstance(sink, InfluxV1Sink)
        await sink.write(["dialect_probe v=1.5 1795000000000"])
        # A field type conflict is a 400 the writer must classify as a rejection.
        with pytest.raises(Rejected, match="conflict"):
            await sink.write(['dialect_probe v="text" 1795000001000'])
    finally:
        await sink.close()


@pytest.fixture
async def influx2_ping() -> AsyncIterator[str]:
    """Stands in for InfluxDB 2.x's /ping only: no 2.x server can be installed here."""

    async def ping(_: web.Request) -> web.Response:
        return web.Response(status=204, headers={"X-Influxdb-Version": "v2.7.11"})

    app = web.Application()
    app.router.add_get("/ping", ping)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def test_a_2x_version_header_selects_the_v2_api(influx2_ping: str) -> None:
    sink = await open_sink(Settings(influx_url=influx2_ping))
    try:
        assert isinstance(sink, InfluxV2Sink)
    finally:
        await sink.close()
