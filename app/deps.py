"""Typed dependency aliases for the routers.

Every dependency is ``async def`` although none awaits: FastAPI runs a plain ``def``
dependency in its thread pool, which cost each generation request three thread hand-offs
(profiled with py-spy under ``loadtest.bench``). These are cheap, non-blocking lookups.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from app.auth.keys import KeyStore, Principal
from app.config import Settings
from app.observability.context import current_request
from app.services.generation import Caller, GenerationService


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_generation(request: Request) -> GenerationService:
    return request.app.state.generation


def _keys(request: Request) -> KeyStore:
    return request.app.state.keys


def _note_key(principal: Principal) -> Principal:
    ctx = current_request()
    if ctx is not None:
        ctx.key_name = principal.name
    return principal


async def get_principal(request: Request) -> Principal:
    """The caller's key (401 without a valid one when auth is on)."""
    return _note_key(_keys(request).authenticate(request.headers.get("authorization")))


async def get_caller(
    principal: Annotated[Principal, Depends(get_principal)],
    x_priority: Annotated[int | None, Header(ge=0, le=10)] = None,
) -> Caller:
    """The caller plus the priority asked for in ``X-Priority`` (it can only lower it)."""
    return Caller(principal, x_priority)


async def require_admin(request: Request) -> Principal:
    """An admin key when auth is on and ADMIN_ROUTES_REQUIRE_KEY (401/403 otherwise)."""
    return _note_key(_keys(request).authenticate_admin(request.headers.get("authorization")))


SettingsDep = Annotated[Settings, Depends(get_settings)]
GenerationDep = Annotated[GenerationService, Depends(get_generation)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]
CallerDep = Annotated[Caller, Depends(get_caller)]
AdminDep = Annotated[Principal, Depends(require_admin)]
