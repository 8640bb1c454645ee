"""``POST /v1/embeddings``."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from app.api.fast_lane import pipeline_endpoint
from app.api.http import JSON_RESPONSES, json_body
from app.api.pipeline_response import PipelineResponse
from app.deps import PipelineDep
from app.schemas.embeddings import EmbeddingRequest
from app.services.embeddings import EmbeddingRun

router = APIRouter(tags=["openai"])


@router.post("/v1/embeddings", responses=JSON_RESPONSES, openapi_extra=json_body(EmbeddingRequest))
@pipeline_endpoint
async def embeddings(pipeline: PipelineDep) -> Response:
    """OpenAI embeddings: vectors of a string, strings, or token ids (float or base64)."""
    return PipelineResponse(lambda inbound: EmbeddingRun(pipeline, inbound))
