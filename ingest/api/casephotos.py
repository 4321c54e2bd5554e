"""Case photos: upload to a case (multipart ``file``), read one back.

JPEG, PNG and WebP only, told by their first bytes (415 ``unsupported_type``); over
``CITYSENSE_CASE_PHOTO_MAX_BYTES`` 413 ``too_large``, found while reading (the body is capped
on arrival too: app.py). A photo is served only as part of a case the caller sees, and only if
it is attached to that case; never cached, never sniffed into something else.
"""

from __future__ import annotations

import asyncio
import re
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import UploadFile

from ingest.api.auth import Caller
from ingest.api.caseaccess import (
    ACT_ERRORS,
    READ_ERRORS,
    assigned,
    case_store,
    handles,
    is_operator,
    now_ms,
    photo_store,
    reported,
    visible_case,
)
from ingest.api.casebodies import PhotoSaved
from ingest.api.context import ApiContext, context
from ingest.api.errors import ApiError, ErrorBody, not_found
from ingest.api.ratelimit import WriteCaller
from ingest.cases.photos import PhotoTooLarge, UnsupportedType
from ingest.cases.store import CaseNotFound
from rules.cases import CaseState, InvalidTransition

router = APIRouter(prefix="/cases", tags=["cases"])
PHOTO_UPLOAD = re.compile(r"^/cases/[^/]+/photos$")
MULTIPART_SLACK = 64 * 1024  # a photo's upload body: the photo plus the multipart framing


@router.post(
    "/{case_id}/photos",
    status_code=201,
    summary="attach a photo (JPEG, PNG or WebP)",
    responses={
        409: {"model": ErrorBody, "description": "the case is closed"},
        413: {"model": ErrorBody, "description": "too_large: over the photo cap"},
        415: {"model": ErrorBody, "description": "unsupported_type: not JPEG, PNG or WebP"},
        **ACT_ERRORS,
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["file"],
                        "properties": {"file": {"type": "string", "format": "binary"}},
                    }
                }
            },
        }
    },
)
async def upload_photo(
    case_id: str,
    principal: WriteCaller,
    ctx: Annotated[ApiContext, Depends(context)],
    request: Request,
) -> JSONResponse:
    """Whoever has a part in the case — an operator, its reporter, its assignee, its handler —
    until it is closed, at most 20 photos; each upload is a history row (who, when). The id is
    the SHA-256 of the content."""
    store, _ = case_store(ctx)
    photos = photo_store(ctx)
    found = await visible_case(ctx, principal, case_id)
    if not (
        is_operator(principal)
        or reported(principal, found)
        or assigned(principal, found)
        or handles(principal, found)
    ):
        raise ApiError(403, "not_involved", "only those with a part in the case add photos")
    if found.state is CaseState.CLOSED:
        raise ApiError(409, "invalid_transition", f"case {case_id} is closed")
    # The body was capped on arrival (app.py: the photo cap plus the multipart framing);
    # Starlette spools a file part to disk past 1 MiB, so nothing here holds it all in memory.
    form = await request.form(max_files=1, max_fields=4)
    try:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise ApiError(422, "invalid_request", "a multipart field 'file' with the photo")
        try:
            photo = await asyncio.to_thread(photos.save, upload.file)
        except PhotoTooLarge as e:
            raise ApiError(413, "too_large", str(e)) from None
        except UnsupportedType as e:
            raise ApiError(415, "unsupported_type", str(e)) from None
    finally:
        await form.close()
    try:
        await asyncio.to_thread(store.attach_photo, case_id, photo, principal.name, now_ms())
    except CaseNotFound:
        raise not_found("case", case_id) from None
    except InvalidTransition as e:  # closed during the upload, or full
        raise ApiError(409, "invalid_transition", str(e)) from None
    return JSONResponse(PhotoSaved(photo=photo).model_dump(), status_code=201)


@router.get(
    "/{case_id}/photos/{photo}",
    summary="a photo of the case",
    response_class=Response,
    responses={
        200: {"content": {"image/jpeg": {}, "image/png": {}, "image/webp": {}}},
        **READ_ERRORS,
    },
)
async def get_photo(
    case_id: str, photo: str, principal: Caller, ctx: Annotated[ApiContext, Depends(context)]
) -> Response:
    """Only a photo attached to this case, and only to someone who sees the case."""
    photos = photo_store(ctx)
    found = await visible_case(ctx, principal, case_id)
    if photo not in found.photos:
        raise not_found("photo", photo)
    stored = await asyncio.to_thread(photos.read, photo)
    if stored is None:
        raise not_found("photo", photo)
    data, kind = stored
    return Response(
        data,
        media_type=kind,
        headers={
            "Content-Disposition": "inline",
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "private, no-store",
        },
    )
