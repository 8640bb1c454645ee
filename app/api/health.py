"""Liveness and readiness probes; they never queue and never touch the engine's queue."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from app.api.http import json_response
from app.errors import EngineUnavailableError, error_response
from app.schemas.errors import ERROR_RESPONSES

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> Response:
    """Liveness: the process answers."""
    return json_response({"status": "ok"})


@router.get("/readyz", responses={503: ERROR_RESPONSES[503]})
async def readyz(request: Request) -> Response:
    """Readiness: the engine is loaded and healthy."""
    engine = request.app.state.generation.engine
    if not engine.is_ready:
        return error_response(EngineUnavailableError("The engine is not ready.", retry_after=5))
    return json_response({"status": "ready"})
