"""Operator routes: ``/resilience/stats`` (admin) and ``/auth/info`` (any valid key)."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from app.api.http import json_response
from app.deps import AdminDep, PrincipalDep, StateDep
from app.schemas.errors import ERROR_RESPONSES

router = APIRouter(tags=["admin"])


@router.get("/resilience/stats", responses={k: ERROR_RESPONSES[k] for k in (401, 403)})
async def resilience_stats(state: StateDep, _: AdminDep) -> Response:
    """Breaker, queue (depth per priority, in flight, totals, estimated wait), engine."""
    engine = state.engine
    return json_response(
        {
            "breaker": state.guards.breaker.stats().as_dict(),
            "queue": state.guards.admission.stats().as_dict(),
            "engine": {
                "ready": engine.is_ready,
                "unfinished_requests": engine.num_unfinished_requests(),
                "restarts": getattr(engine, "restarts", 0),
                "last_failure": getattr(engine, "last_failure", None),
            },
            "draining": state.lifecycle.draining,
        }
    )


@router.get("/auth/info", responses={401: ERROR_RESPONSES[401]})
async def auth_info(state: StateDep, principal: PrincipalDep) -> Response:
    """The caller's key name, tier, limits and remaining budget; never a secret."""
    return json_response(await state.guards.limiter.info(principal))
