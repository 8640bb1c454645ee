"""``POST /v1/completions``."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from app.api.http import GENERATION_RESPONSES, disconnect_waiter, json_response, sse_response
from app.deps import GenerationDep
from app.schemas.openai import CompletionRequest
from app.services.completions import create_completion, stream_completion

router = APIRouter(tags=["openai"])


@router.post("/v1/completions", responses=GENERATION_RESPONSES)
async def completions(
    body: CompletionRequest, service: GenerationDep, request: Request
) -> Response:
    """OpenAI (legacy) text completions, streaming (SSE) or not."""
    if body.stream:
        return sse_response(await stream_completion(service, body))
    return json_response(await create_completion(service, body, disconnect_waiter(request)))
