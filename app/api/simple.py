"""The seed project's simple endpoints, ``POST /v1/generate`` and ``POST /v1/stream``."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from app.api.fast_lane import pipeline_endpoint
from app.api.http import JSON_RESPONSES, SSE_RESPONSES, json_body
from app.api.pipeline_response import PipelineResponse
from app.deps import PipelineDep
from app.schemas.openai import SimpleGenerateRequest
from app.services.simple import SimpleEndpoint

router = APIRouter(tags=["simple"])
GENERATE, STREAM = SimpleEndpoint(stream=False), SimpleEndpoint(stream=True)
BODY = json_body(SimpleGenerateRequest)


@router.post("/v1/generate", responses=JSON_RESPONSES, openapi_extra=BODY)
@pipeline_endpoint
async def generate(pipeline: PipelineDep) -> Response:
    """Generate text for one prompt; JSON ``{"text", "finish_reason", "usage"}``."""
    return PipelineResponse(pipeline.runner(GENERATE))


@router.post("/v1/stream", responses=SSE_RESPONSES, openapi_extra=BODY)
@pipeline_endpoint
async def stream(pipeline: PipelineDep) -> Response:
    """Stream text for one prompt as SSE ``data: {"text": ...}`` events, then ``[DONE]``."""
    return PipelineResponse(pipeline.runner(STREAM))
