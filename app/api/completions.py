"""``POST /v1/completions``."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from app.api.fast_lane import pipeline_endpoint
from app.api.http import STREAMING_RESPONSES, json_body
from app.api.pipeline_response import PipelineResponse
from app.deps import PipelineDep
from app.schemas.openai import CompletionRequest
from app.services.completions import CompletionEndpoint

router = APIRouter(tags=["openai"])
COMPLETIONS = CompletionEndpoint()


@router.post(
    "/v1/completions", responses=STREAMING_RESPONSES, openapi_extra=json_body(CompletionRequest)
)
@pipeline_endpoint
async def completions(pipeline: PipelineDep) -> Response:
    """OpenAI (legacy) text completions, streaming (SSE) or not."""
    return PipelineResponse(pipeline.runner(COMPLETIONS))
