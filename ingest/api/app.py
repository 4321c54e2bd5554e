"""The FastAPI application: routers, the error shape, limits. Served by ``citysense serve``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, RedirectResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ingest import web
from ingest.api import (
    alerts,
    audit,
    casephotos,
    cases,
    cluster,
    deadletters,
    deliveries,
    devices,
    duties,
    events,
    health,
    ngsild,
    quality,
    rules,
    timeseries,
    traffic,
    ways,
)
from ingest.api.context import ApiContext
from ingest.api.errors import error_response, install_error_handlers
from ingest.api.ratelimit import TokenBucket

MAX_BODY_BYTES = 1024 * 1024  # the largest body is a rule file (256 KiB); more is refused early

DESCRIPTION = """\
The citysense HTTP API for the command centre and for grid workers.

Every request except `/health` needs `Authorization: Bearer <token>` (create one with
`citysense tokens add`). An **operator** sees everything; a **grid worker** sees only the
devices and alerts inside its own areas, and gets 404 for anything else. Errors always have
the shape `{"error": {"code": "...", "message": "...", "detail": ...}}`.
"""


class CountedBody:
    """Cuts a request body off at ``max_bytes`` as it arrives: 413 in the one error shape.

    The Content-Length check in ``create_app`` refuses a declared oversize body before it is
    read; a chunked body declares nothing, and without this would be read whole. (FastAPI's
    own ``max_body_size`` answers in plain text, not in this API's error shape.)
    """

    def __init__(
        self, app: ASGIApp, max_bytes: int, cap: Callable[[str], int] | None = None
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.cap = cap or (lambda _path: max_bytes)  # per path: a case photo may be larger

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        seen = 0
        limit = self.cap(scope.get("path", ""))

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    # Raised inside the route's body read, so the error handlers answer it.
                    raise HTTPException(413, f"bodies are limited to {limit} bytes")
            return message

        await self.app(scope, counted, send)


# The pages keep the operator's token in localStorage: a second wall behind building the DOM
# from text nodes only. Scripts and styles only from this server, no inline code, no framing.
STRICT_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
# /docs is Swagger UI: its script and styles are vendored (served under /ui/static/vendor/, so
# it works on an intranet), but it starts with an inline script: it gets no script policy (it
# holds no token of ours), only no framing.
RELAXED_CSP = "frame-ancestors 'none'"
SWAGGER = "/ui/static/vendor/swagger-ui"
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


def create_app(ctx: ApiContext, write_limiter: TokenBucket | None = None) -> FastAPI:
    """The application around one service's context; writes limited per token."""
    app = FastAPI(
        docs_url=None,  # served below from the vendored files, not a CDN
        redoc_url=None,  # ReDoc would need a CDN too; /docs covers it
        title="citysense",
        version="0.1.0",
        description=DESCRIPTION,
        openapi_tags=[
            {"name": "alerts", "description": "alerts, their history, acknowledge, resolve, live"},
            {
                "name": "cases",
                "description": "cases (work orders): report, dispatch, handle, close",
            },
            {"name": "devices", "description": "the registry's devices and their newest values"},
            {"name": "time series", "description": "InfluxDB data, raw or aggregated"},
            {"name": "rules", "description": "the rules running, and validation of a rule file"},
            {"name": "dead letters", "description": "rejected messages"},
            {"name": "cluster", "description": "the workers and their partitions (nats)"},
            {"name": "health", "description": "liveness, readiness, metrics"},
        ],
    )
    app.state.ctx = ctx
    app.state.write_limiter = write_limiter if write_limiter is not None else TokenBucket()
    install_error_handlers(app)
    # Added first, so it sits inside the middleware below: next to the route, whose body read
    # then raises the 413 directly (through BaseHTTPMiddleware it would arrive wrapped, as 400).
    photo_cap = ctx.settings.case_photo_max_bytes + casephotos.MULTIPART_SLACK

    def cap(path: str) -> int:
        return photo_cap if casephotos.PHOTO_UPLOAD.fullmatch(path) else MAX_BODY_BYTES

    app.add_middleware(CountedBody, max_bytes=MAX_BODY_BYTES, cap=cap)

    @app.middleware("http")
    async def _limit_body(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        declared = request.headers.get("content-length")
        limit = cap(request.url.path)
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            return error_response(413, "too_large", f"bodies are limited to {limit} bytes")
        return await call_next(request)

    @app.middleware("http")
    async def _security_headers(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        path = request.url.path
        relaxed = path == "/docs" or path.startswith("/docs/") or path == "/redoc"
        response.headers["Content-Security-Policy"] = RELAXED_CSP if relaxed else STRICT_CSP
        return response

    for module in (
        health,
        devices,
        duties,
        timeseries,
        events,
        traffic,
        quality,
        alerts,
        cases,
        casephotos,
        deliveries,  # GET /deliveries (issue 19)
        rules,
        deadletters,
        cluster,
        ways,
        ngsild,
    ):
        app.include_router(module.router)
    audit.install(app)  # GET /audit, and every department token's request recorded
    _add_front_door(app)
    app.include_router(web.router)  # the pages under /ui/ (public; data comes from the API)
    # No CORSMiddleware, on purpose: the API is for the command centre's server side and the
    # grid workers' app, not for pages of other origins; browsers then refuse cross-origin
    # reads. tests/unit/test_api_hardening.py holds that.
    return app


def _add_front_door(app: FastAPI) -> None:
    """``/`` leads to the pages; ``/docs`` is Swagger UI from the package, not from a CDN."""

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse("/ui/", status_code=307)

    @app.get("/docs", include_in_schema=False)
    async def swagger() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title="citysense — API",
            swagger_js_url=f"{SWAGGER}-bundle.js",
            swagger_css_url=f"{SWAGGER}.css",
            swagger_favicon_url=f"{SWAGGER}-favicon-32x32.png",
        )
