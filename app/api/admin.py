"""Operator routes: ``/resilience/stats`` (admin) and ``/auth/info`` (any valid key)."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from app.api.http import json_response
from app.deps import AdminDep, PrincipalDep, StateDep
from app.routing.health import engines_summary
from app.schemas.errors import ERROR_RESPONSES

router = APIRouter(tags=["admin"])


@router.get("/resilience/stats", responses={k: ERROR_RESPONSES[k] for k in (401, 403)})
async def resilience_stats(state: StateDep, _: AdminDep) -> Response:
    """The queue, each deployment (breaker, in flight, health, error rate, latency), the
    in-process engines together, and whether the gateway is draining."""
    registry = state.registry
    deployments = {d.state.name: d.describe() for d in registry.router.deployments()}
    return json_response(
        {
            "queue": state.guards.admission.stats().as_dict(),
            "deployments": deployments,
            "engine": engines_summary(registry),
            "registry": registry.describe(),
            "draining": state.lifecycle.draining,
        }
    )


@router.get("/auth/info", responses={401: ERROR_RESPONSES[401]})
async def auth_info(state: StateDep, principal: PrincipalDep) -> Response:
    """The caller's key name, tier, limits and remaining budget; never a secret."""
    return json_response(await state.guards.limiter.info(principal))
