"""Liveness and readiness probes; they never queue and never touch the engine's queue."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from app.api.errors import error_response
from app.api.http import json_response
from app.deps import StateDep
from app.errors import EngineUnavailableError, ServiceUnavailableError
from app.schemas.errors import ERROR_RESPONSES

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> Response:
    """Liveness: the process answers."""
    return json_response({"status": "ok"})


@router.get("/readyz", responses={503: ERROR_RESPONSES[503]})
async def readyz(state: StateDep) -> Response:
    """Readiness: engine loaded and healthy, breaker not open, not draining."""
    if state.lifecycle.draining:
        error = ServiceUnavailableError("The server is shutting down.", retry_after=5)
        return error_response(error)
    if not state.engine.is_ready:
        return error_response(EngineUnavailableError("The engine is not ready.", retry_after=5))
    # An open breaker past its reset timeout lets the next request through as a trial, so
    # it counts as ready: otherwise a pod out of rotation would never get that request.
    retry = state.guards.breaker.retry_after()
    if retry > 0:
        return error_response(
            EngineUnavailableError("The circuit breaker is open.", retry_after=retry)
        )
    return json_response({"status": "ready"})
