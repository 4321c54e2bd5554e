"""The FastAPI application: routers, the error shape, limits. Served by ``citysense serve``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response

from ingest.api import alerts, deadletters, devices, health, rules, timeseries
from ingest.api.context import ApiContext
from ingest.api.errors import error_response, install_error_handlers

MAX_BODY_BYTES = 1024 * 1024  # the largest body is a rule file (256 KiB); more is refused early

DESCRIPTION = """\
The citysense HTTP API for the command centre and for grid workers.

Every request except `/health` needs `Authorization: Bearer <token>` (create one with
`citysense tokens add`). An **operator** sees everything; a **grid worker** sees only the
devices and alerts inside its own areas, and gets 404 for anything else. Errors always have
the shape `{"error": {"code": "...", "message": "...", "detail": ...}}`.
"""


def create_app(ctx: ApiContext) -> FastAPI:
    """The application around one service's context."""
    app = FastAPI(
        title="citysense",
        version="0.1.0",
        description=DESCRIPTION,
        openapi_tags=[
            {"name": "alerts", "description": "alerts, their history, acknowledge, resolve, live"},
            {"name": "devices", "description": "the registry's devices and their newest values"},
            {"name": "time series", "description": "InfluxDB data, raw or aggregated"},
            {"name": "rules", "description": "the rules running, and validation of a rule file"},
            {"name": "dead letters", "description": "rejected messages"},
            {"name": "health", "description": "liveness, readiness, metrics"},
        ],
    )
    app.state.ctx = ctx
    install_error_handlers(app)

    @app.middleware("http")
    async def _limit_body(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY_BYTES):
            return error_response(413, "too_large", f"bodies are limited to {MAX_BODY_BYTES} bytes")
        return await call_next(request)

    for module in (health, devices, timeseries, alerts, rules, deadletters):
        app.include_router(module.router)
    return app
