"""``/health`` (the process answers), ``/ready`` (it can do its job) and ``/metrics``."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from ingest.api.auth import Operator
from ingest.api.context import ApiContext, Probe, context
from ingest.api.errors import ERRORS

router = APIRouter(tags=["health"])
PROBE_TIMEOUT_S = 2.0


class Health(BaseModel):
    """The process is alive."""

    status: str = "ok"


class Readiness(BaseModel):
    """Whether each dependency answers; ``reasons`` says what is wrong when not ready."""

    ready: bool
    checks: dict[str, bool]
    reasons: dict[str, str]
    spool_points: int
    # What an operator should know that does not stop ingest (the rules' saved state could
    # not be read at start, so silence and windows started over): ready all the same.
    warnings: dict[str, str] = {}


@router.get("/health", summary="the process is alive (no token needed)")
async def health() -> Health:
    """Always ok while the process serves requests."""
    return Health()


async def _probe(name: str, probe: Probe) -> tuple[str, str | None]:
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_S):
            return name, await probe()
    except TimeoutError:
        return name, f"no answer within {PROBE_TIMEOUT_S:g} s"
    except Exception as e:  # a probe failing is the answer, not an error of this request
        return name, f"{type(e).__name__}: {e}"


@router.get(
    "/ready",
    summary="broker connected, InfluxDB answering, alert store open",
    responses={503: {"model": Readiness, "description": "not ready, with the reasons"}, **ERRORS},
)
async def ready(_: Operator, ctx: Annotated[ApiContext, Depends(context)]) -> JSONResponse:
    """200 when every check passes, 503 with the reasons otherwise."""
    results = await asyncio.gather(*(_probe(n, p) for n, p in ctx.probes.items()))
    reasons = {name: why for name, why in results if why is not None}
    body = Readiness(
        ready=not reasons,
        checks={name: why is None for name, why in results},
        reasons=reasons,
        spool_points=ctx.spool_size(),
        warnings=ctx.warnings(),
    )
    return JSONResponse(body.model_dump(), status_code=200 if body.ready else 503)


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}}, **ERRORS},
)
async def metrics(_: Operator, ctx: Annotated[ApiContext, Depends(context)]) -> Response:
    """The Prometheus text format; scrape with the operator token as bearer."""
    source = ctx.metrics
    if source is None:
        return Response(b"", media_type="text/plain; version=0.0.4")
    body = await asyncio.to_thread(source.render)
    return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")
