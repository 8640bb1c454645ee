"""``POST /v1/chat/completions``."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from app.api.fast_lane import pipeline_endpoint
from app.api.http import STREAMING_RESPONSES, json_body
from app.api.pipeline_response import PipelineResponse
from app.deps import PipelineDep
from app.schemas.openai import ChatCompletionRequest
from app.services.chat import ChatEndpoint

router = APIRouter(tags=["openai"])
CHAT = ChatEndpoint()


@router.post(
    "/v1/chat/completions",
    responses=STREAMING_RESPONSES,
    openapi_extra=json_body(ChatCompletionRequest),
)
@pipeline_endpoint
async def chat_completions(pipeline: PipelineDep) -> Response:
    """OpenAI chat completions, streaming (SSE) or not, with function tools."""
    return PipelineResponse(pipeline.runner(CHAT))
