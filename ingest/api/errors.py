"""The API's error shape, one for every failure: ``{"error": {"code", "message", "detail"}}``.

Codes are stable names clients can branch on; messages are for people. No stack trace or
exception text of an unexpected failure ever reaches a client: it is logged with a request id
the client is given instead.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)


class ErrorInfo(BaseModel):
    """What went wrong."""

    code: str
    message: str
    detail: Any = None


class ErrorBody(BaseModel):
    """Every error response."""

    error: ErrorInfo


class ApiError(Exception):
    """An error with a status and a stable code, raised by routes and dependencies."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        detail: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.detail = detail
        self.headers = headers


def not_found(what: str, ident: str) -> ApiError:
    """404 for something that does not exist — or that the caller may not see."""
    return ApiError(404, "not_found", f"no {what} {ident!r}")


def error_response(
    status: int, code: str, message: str, detail: Any = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    """A JSON error response of the one shape."""
    body = ErrorBody(error=ErrorInfo(code=code, message=message, detail=detail))
    return JSONResponse(body.model_dump(mode="json"), status_code=status, headers=headers)


# What Starlette's own HTTP errors (unknown path, wrong method) are called here.
_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "too_large", 401: "unauthorized"}


def _validation_detail(exc: RequestValidationError) -> list[dict[str, Any]]:
    # The offending input is left out: it may be long or hostile, and the client has it.
    return [
        {
            "loc": [str(part) for part in e.get("loc", ())],
            "msg": str(e.get("msg", "")),
            "type": str(e.get("type", "")),
        }
        for e in exc.errors()
    ]


def install_error_handlers(app: FastAPI) -> None:
    """Map every exception to the one error shape."""

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message, exc.detail, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(
            422,
            "invalid_request",
            "the request's parameters or body are invalid",
            _validation_detail(exc),
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}")
        return error_response(exc.status_code, code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        ref = secrets.token_hex(4)
        log.error("%s %s failed (ref %s)", request.method, request.url.path, ref, exc_info=exc)
        return error_response(500, "internal", f"internal error; reference {ref} in the server log")


# For OpenAPI: the error responses every authenticated route may give.
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "no or unknown bearer token"},
    422: {"model": ErrorBody, "description": "invalid parameters"},
}
