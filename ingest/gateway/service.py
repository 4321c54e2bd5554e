"""``citysense gateway hj212|sl651``: one protocol's gateway with everything it owns."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from devices.registry import Registry
from ingest.datadir import private_dir
from ingest.gateway.dialects import dialect
from ingest.gateway.publisher import GatewayPublisher
from ingest.gateway.server import GatewayServer
from ingest.settings import Settings
from ingest.sinks.deadletters import DeadLetterBuffer, DeadLetterStore, store_location

log = logging.getLogger(__name__)


def configured_port(settings: Settings, protocol: str) -> int:
    """The port the settings give ``protocol``'s gateway."""
    return settings.gateway_hj212_port if protocol == "hj212" else settings.gateway_sl651_port


async def run_gateway(
    settings: Settings,
    registry: Registry,
    protocol: str,
    stop: asyncio.Event,
    *,
    port: int | None = None,
    on_ready: Callable[[int], None] = lambda port: None,
) -> GatewayServer:
    """Serve ``protocol``'s stations until ``stop``; return the server (its counts)."""
    partitions = settings.partitions if settings.broker == "nats" else None
    speaks = dialect(protocol, registry, partitions, settings.gateway_hj212_skip)
    if not speaks.stations:
        log.warning("no station of the registry speaks %s: every frame will be refused", protocol)
    await asyncio.to_thread(private_dir, settings.data_dir)  # its dead letters live there
    store = await asyncio.to_thread(
        DeadLetterStore, store_location(settings), settings.deadletter_max_rows
    )
    dead_letters = DeadLetterBuffer(store, on_commit=lambda n: None)
    publisher = GatewayPublisher(settings, protocol)
    server = GatewayServer(settings, speaks, publisher, dead_letters)
    try:
        async with asyncio.TaskGroup() as tg:
            broker = tg.create_task(publisher.run(), name="broker")
            commits = tg.create_task(dead_letters.run(), name="dead-letters")
            status = tg.create_task(_status(server, settings.status_interval_s), name="status")
            await server.serve(
                configured_port(settings, protocol) if port is None else port, stop, on_ready
            )
            dead_letters.close()  # after the stations: their last refusals are in it
            await commits
            broker.cancel()
            status.cancel()
    finally:
        store.close()
    log.info("%s", server.status(stopped=True))
    return server


async def _status(server: GatewayServer, interval_s: float) -> None:
    with contextlib.suppress(asyncio.CancelledError):
        while True:
            await asyncio.sleep(max(interval_s, 5.0))
            log.info("%s", server.status())
