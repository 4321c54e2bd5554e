"""Bearer-token authentication and what each caller may see.

Tokens come from the tokens file (``ingest/api/tokens.py``: hashed at rest, compared in constant
time). A grid worker sees the devices and alerts inside its bound areas only; anything else
answers 404, exactly as if it did not exist, so ids do not leak.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import replace
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ingest.api.context import ApiContext, context
from ingest.api.errors import ApiError
from ingest.api.sharing import as_department
from ingest.api.tokens import Principal, Role
from ingest.people import Post

_bearer = HTTPBearer(auto_error=False, description="a token from `citysense tokens add`")
RELOAD_EVERY_S = 1.0  # a token added or revoked by the CLI takes effect within a second


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, "unauthorized", message, headers={"WWW-Authenticate": "Bearer"})


def caller(
    request: Request,
    ctx: Annotated[ApiContext, Depends(context)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """The authenticated caller; 401 without a valid bearer token."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise _unauthorized("a bearer token is required")
    now = time.monotonic()
    if now - ctx.tokens_checked >= RELOAD_EVERY_S:
        ctx.tokens_checked = now
        ctx.tokens.reload_if_changed()
    principal = ctx.tokens.verify(credentials.credentials)
    if principal is None:
        # A token added a moment ago: another request may have just taken the periodic check
        # and still be reloading. reload_if_changed waits for that (the store's lock) or
        # reloads itself; then look once more before saying no.
        ctx.tokens.reload_if_changed()
        principal = ctx.tokens.verify(credentials.credentials)
    if principal is None:
        raise _unauthorized("unknown or revoked token")
    if principal.role is Role.PERSON:
        principal = _as_person(ctx, principal)
    if principal.role is Role.DEPARTMENT:  # the sharing rules: ingest/api/sharing.py
        principal = as_department(request, ctx, principal)
    request.state.principal = principal
    return principal


def _as_person(ctx: ApiContext, token: Principal) -> Principal:
    """A person's token seen through the people file as it is now: their posts and areas."""
    person = ctx.people.get(token.name) if ctx.people is not None else None
    if person is None:
        raise _unauthorized(f"the token stands for {token.name}, who is not in the people file")
    return replace(
        token,
        areas=frozenset(person.view_areas(ctx.registry)),
        audiences=frozenset(person.audiences(ctx.registry)),
        person=person.username,
        area_wide=person.role is Post.GRID_WORKER,
    )


def operator(principal: Annotated[Principal, Depends(caller)]) -> Principal:
    """Only operators; a grid worker is told the path does not exist for it (404)."""
    if principal.role is not Role.OPERATOR:
        raise ApiError(404, "not_found", "not found")
    return principal


def may_see(principal: Principal, area_ids: Iterable[str]) -> bool:
    """Whether ``principal`` may see something placed in these areas (grid up to city)."""
    return principal.sees(area_ids)


Caller = Annotated[Principal, Depends(caller)]
Operator = Annotated[Principal, Depends(operator)]
