"""Serving the API inside the service's event loop (one process, one loop: docs/architecture.md)."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Generator

import uvicorn
from fastapi import FastAPI

GRACE_S = 3  # at shutdown, how long open requests (and live streams) may take to finish


class _Server(uvicorn.Server):
    # The service owns SIGTERM/SIGINT and stops the API in its shutdown order; uvicorn's own
    # handlers would take the signal from it.
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class ApiServer:
    """uvicorn on a socket bound up front, so the address is known (port 0: any free port)."""

    def __init__(self, app: FastAPI, host: str, port: int) -> None:
        self._socket = socket.create_server((host, port), reuse_port=False)
        self.host, self.port = self._socket.getsockname()[:2]
        config = uvicorn.Config(
            app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=GRACE_S,
        )
        self._server = _Server(config)

    @property
    def url(self) -> str:
        """Where the API answers."""
        return f"http://{self.host}:{self.port}"

    async def run(self) -> None:
        """Serve until ``stop``; then finish open requests (streams are cut)."""
        try:
            await self._server.serve(sockets=[self._socket])
        finally:
            self._socket.close()

    def stop(self) -> None:
        """Ask the server to finish: it stops accepting, then waits for open requests (live
        streams included) at most ``GRACE_S`` before closing them."""
        self._server.should_exit = True
