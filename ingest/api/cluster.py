"""The cluster's workers and partitions (operators only): who owns what, how far each read."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends

from ingest.api.auth import Operator
from ingest.api.context import ApiContext, context
from ingest.api.errors import ERRORS, ApiError, ErrorBody
from ingest.cluster.status import ClusterStatus, read_cluster_status

router = APIRouter(prefix="/cluster", tags=["cluster"])

RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERRORS,
    404: {"model": ErrorBody, "description": "`no_cluster`: the service runs with mosquitto"},
}


@router.get(
    "", summary="which worker owns which partitions, how far each read", responses=RESPONSES
)
async def cluster_status(
    _: Operator, ctx: Annotated[ApiContext, Depends(context)]
) -> ClusterStatus:
    """Operators only: the leases and members as stored in the shared database now."""
    if ctx.leases is None:
        raise ApiError(
            404, "no_cluster", "no cluster: the service runs with CITYSENSE_BROKER=mosquitto"
        )
    return await asyncio.to_thread(read_cluster_status, ctx.leases, int(time.time() * 1000))
