"""The seed project's simple endpoints, ``POST /v1/generate`` and ``POST /v1/stream``."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response, StreamingResponse

from app.api.http import (
    GENERATION_RESPONSES,
    SSE_RESPONSES,
    disconnect_waiter,
    reply_response,
)
from app.deps import CallerDep, GenerationDep
from app.schemas.openai import SimpleGenerateRequest
from app.services.simple import simple_generation

router = APIRouter(tags=["simple"])


@router.post("/v1/generate", responses=GENERATION_RESPONSES)
async def generate(
    body: SimpleGenerateRequest, service: GenerationDep, caller: CallerDep, request: Request
) -> Response:
    """Generate text for one prompt; JSON ``{"text", "finish_reason", "usage"}``."""
    waiter = disconnect_waiter(request)
    return reply_response(await simple_generation(service, caller, body, waiter, stream=False))


@router.post("/v1/stream", responses=SSE_RESPONSES, response_class=StreamingResponse)
async def stream(
    body: SimpleGenerateRequest, service: GenerationDep, caller: CallerDep, request: Request
) -> Response:
    """Stream text for one prompt as SSE ``data: {"text": ...}`` events, then ``[DONE]``."""
    waiter = disconnect_waiter(request)
    return reply_response(await simple_generation(service, caller, body, waiter, stream=True))
