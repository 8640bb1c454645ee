"""Liveness and readiness probes; they never queue and never touch an engine's queue."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from app.api.errors import error_response
from app.api.http import json_response
from app.deps import StateDep
from app.errors import EngineUnavailableError, ServiceUnavailableError
from app.schemas.errors import ERROR_RESPONSES

router = APIRouter(tags=["health"])
NOT_READY_RETRY_S = 5


@router.get("/healthz")
async def healthz() -> Response:
    """Liveness: the process answers."""
    return json_response({"status": "ok"})


@router.get("/readyz", responses={503: ERROR_RESPONSES[503]})
async def readyz(state: StateDep) -> Response:
    """Readiness: not draining, and every model (``READINESS=any``: some model) has a live
    deployment or a live fallback (loaded or answering its health checks, its breaker not
    open)."""
    if state.lifecycle.draining:
        error = ServiceUnavailableError("The server is shutting down.", retry_after=5)
        return error_response(error)
    router = state.registry.router
    unavailable = router.unavailable_models()
    if state.settings.server.readiness == "any" and len(unavailable) < len(router.routes):
        unavailable = []
    if unavailable:
        message = f"No live deployment for: {', '.join(unavailable)}."
        hints = [d.ready_in_s for d in router.deployments()]
        retry = min((h for h in hints if h), default=NOT_READY_RETRY_S)
        return error_response(EngineUnavailableError(message, retry_after=retry))
    return json_response({"status": "ready"})
