"""Who answers for what beside the grid: the registry's rivers and roads in segments and its
departments with their units (devices/responsibility.py), for the pages' pickers (a case is
dispatched to ``department/{id}/{area}``) and for anyone reading an alert's audiences."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from pydantic import BaseModel

from devices.responsibility import Department, River, Road
from ingest.api.auth import Caller
from ingest.api.context import ApiContext, context
from ingest.api.errors import ERRORS

router = APIRouter(prefix="/duties", tags=["devices"])


class Duties(BaseModel):
    """The registry's rivers, roads and departments, in file order."""

    rivers: list[River]
    roads: list[Road]
    departments: list[Department]


@router.get("", summary="rivers, roads and departments of the registry", responses=ERRORS)
async def duties(_: Caller, ctx: Annotated[ApiContext, Depends(context)]) -> Duties:
    """The structure of the duty system (not who holds the posts: that is the people file)."""
    r = ctx.registry
    return Duties(
        rivers=list(r.rivers.values()),
        roads=list(r.roads.values()),
        departments=list(r.departments.values()),
    )
