"""``GET /quality``: GB 3838-2002 water class of each river station over a local day or month,
whether it meets its target class, and the compliance rate (达标率) per river segment or
county (docs/rules.md "Period assessment and compliance").

Built in ``qualityquery``, judged in ``rules.assessment``; answered here.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query

from ingest.api.auth import Caller
from ingest.api.context import ApiContext, context
from ingest.api.errors import ERRORS, ApiError, ErrorBody
from ingest.api.eventquery import DEFAULT_TZ
from ingest.api.influxql import InfluxQueryError, InfluxUnavailable, QueryRefused
from ingest.api.qualityquery import By, QualityReport, quality_report
from ingest.api.tokens import Role
from rules.assessment import PeriodKind

router = APIRouter(tags=["time series"])

_ERRORS = {
    404: {"model": ErrorBody, "description": "no such river (or none of its stations yours)"},
    502: {"model": ErrorBody, "description": "InfluxDB failed"},
    503: {"model": ErrorBody, "description": "InfluxDB cannot be reached"},
    **ERRORS,
}


@router.get(
    "/quality",
    summary="water class per station over a local day or month, and compliance rates",
    response_model=QualityReport,
    responses=_ERRORS,
)
async def quality(
    principal: Caller,
    ctx: Annotated[ApiContext, Depends(context)],
    period: PeriodKind = "day",
    date: Annotated[
        str | None,
        Query(
            description="YYYY-MM-DD for a day, YYYY-MM for a month; default: the current one",
            max_length=10,
            examples=["2026-06-01"],
        ),
    ] = None,
    tz: Annotated[str, Query(description="an IANA time zone", max_length=64)] = DEFAULT_TZ,
    by: By = "segment",
    river: Annotated[
        str | None, Query(description="a river id of the registry", max_length=64)
    ] = None,
) -> QualityReport:
    """Means of every sample in the period; a grid worker sees only the stations in its areas
    (its groups count those alone)."""
    allowed = None if principal.role is Role.OPERATOR else principal.areas
    try:
        return await quality_report(
            ctx.http,
            ctx.settings.influx_url,
            ctx.settings.influx_database,
            ctx.registry,
            allowed,
            kind=period,
            date_text=date,
            tz=tz,
            by=by,
            river=river,
            now=datetime.now(UTC),
        )
    except QueryRefused as e:
        raise ApiError(e.http_status, e.code, e.message) from None
    except InfluxUnavailable as e:
        raise ApiError(503, "influx_unavailable", f"InfluxDB cannot be reached: {e}") from None
    except InfluxQueryError as e:
        raise ApiError(502, "influx_error", f"InfluxDB did not answer the query: {e}") from None
