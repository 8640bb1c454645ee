"""The seed project's simple endpoints, ``POST /v1/generate`` and ``POST /v1/stream``."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from app.api.http import GENERATION_RESPONSES, disconnect_waiter, json_response, sse_response
from app.deps import GenerationDep
from app.schemas.openai import SimpleGenerateRequest
from app.services.simple import generate_text, stream_text

router = APIRouter(tags=["simple"])


@router.post("/v1/generate", responses=GENERATION_RESPONSES)
async def generate(
    body: SimpleGenerateRequest, service: GenerationDep, request: Request
) -> Response:
    """Generate text for one prompt; JSON ``{"text", "finish_reason", "usage"}``."""
    return json_response(await generate_text(service, body, disconnect_waiter(request)))


@router.post("/v1/stream", responses=GENERATION_RESPONSES)
async def stream(body: SimpleGenerateRequest, service: GenerationDep) -> Response:
    """Stream text for one prompt as SSE ``data: {"text": ...}`` events, then ``[DONE]``."""
    return sse_response(await stream_text(service, body))
