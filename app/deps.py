"""Typed dependency aliases for the routers.

Every dependency is ``async def`` although none awaits: FastAPI runs a plain ``def``
dependency in its thread pool, which cost each generation request three thread hand-offs
(profiled with py-spy under ``loadtest.bench``). These are cheap, non-blocking lookups.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.auth.keys import Principal
from app.observability.context import current_request
from app.services.pipeline import GenerationPipeline
from app.state import GatewayState


async def get_state(request: Request) -> GatewayState:
    return request.app.state.gateway


StateDep = Annotated[GatewayState, Depends(get_state)]


async def get_pipeline(state: StateDep) -> GenerationPipeline:
    return state.pipeline


def _note_key(principal: Principal) -> Principal:
    ctx = current_request()
    if ctx is not None:
        ctx.key_name = principal.name
    return principal


async def get_principal(request: Request, state: StateDep) -> Principal:
    """The caller's key (401 without a valid one when auth is on)."""
    return _note_key(state.keys.authenticate(request.headers.get("authorization")))


async def require_admin(request: Request, state: StateDep) -> Principal:
    """An admin key when auth is on and ADMIN_ROUTES_REQUIRE_KEY (401/403 otherwise)."""
    return _note_key(state.keys.authenticate_admin(request.headers.get("authorization")))


PipelineDep = Annotated[GenerationPipeline, Depends(get_pipeline)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]
AdminDep = Annotated[Principal, Depends(require_admin)]
