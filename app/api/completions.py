"""``POST /v1/completions``."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from app.api.http import STREAMING_RESPONSES, disconnect_waiter, reply_response
from app.deps import CallerDep, GenerationDep
from app.schemas.openai import CompletionRequest
from app.services.completions import completion

router = APIRouter(tags=["openai"])


@router.post("/v1/completions", responses=STREAMING_RESPONSES)
async def completions(
    body: CompletionRequest, service: GenerationDep, caller: CallerDep, request: Request
) -> Response:
    """OpenAI (legacy) text completions, streaming (SSE) or not."""
    return reply_response(await completion(service, caller, body, disconnect_waiter(request)))
