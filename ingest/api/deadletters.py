"""Dead letters: what was rejected, why, and how many of each reason."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel

from ingest.api.auth import Operator
from ingest.api.context import ApiContext, context
from ingest.api.errors import ERRORS
from ingest.sinks.deadletters import DeadLetter

router = APIRouter(prefix="/deadletters", tags=["dead letters"])


class DeadLetters(BaseModel):
    """Counts per reason over the whole store, and the newest rows asked for."""

    counts: dict[str, int]
    items: list[DeadLetter]


@router.get("", summary="rejected messages, newest first, with counts per reason", responses=ERRORS)
async def list_dead_letters(
    _: Operator,
    ctx: Annotated[ApiContext, Depends(context)],
    reason: Annotated[
        str | None, Query(pattern=r"^[a-z_]{1,40}$", description="one reason")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> DeadLetters:
    """Operators only: payloads may hold anything a device (or an attacker) sent."""
    counts = await asyncio.to_thread(ctx.dead_letters.counts)
    items = await asyncio.to_thread(ctx.dead_letters.list, reason=reason, limit=limit)
    return DeadLetters(counts=counts, items=items)
