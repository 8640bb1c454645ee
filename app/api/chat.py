"""``POST /v1/chat/completions``."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from app.api.http import STREAMING_RESPONSES, disconnect_waiter, reply_response
from app.deps import CallerDep, GenerationDep
from app.schemas.openai import ChatCompletionRequest
from app.services.chat import chat_completion

router = APIRouter(tags=["openai"])


@router.post("/v1/chat/completions", responses=STREAMING_RESPONSES)
async def chat_completions(
    body: ChatCompletionRequest, service: GenerationDep, caller: CallerDep, request: Request
) -> Response:
    """OpenAI chat completions, streaming (SSE) or not."""
    return reply_response(await chat_completion(service, caller, body, disconnect_waiter(request)))
