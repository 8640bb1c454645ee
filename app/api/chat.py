"""``POST /v1/chat/completions``."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from app.api.http import GENERATION_RESPONSES, disconnect_waiter, json_response, sse_response
from app.deps import GenerationDep
from app.schemas.openai import ChatCompletionRequest
from app.services.chat import create_chat_completion, stream_chat_completion

router = APIRouter(tags=["openai"])


@router.post("/v1/chat/completions", responses=GENERATION_RESPONSES)
async def chat_completions(
    body: ChatCompletionRequest, service: GenerationDep, request: Request
) -> Response:
    """OpenAI chat completions, streaming (SSE) or not."""
    if body.stream:
        return sse_response(await stream_chat_completion(service, body))
    return json_response(await create_chat_completion(service, body, disconnect_waiter(request)))
