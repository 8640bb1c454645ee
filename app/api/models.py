"""``GET /v1/models`` and ``GET /v1/models/{model}``."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from app.api.http import json_response
from app.deps import PipelineDep, PrincipalDep
from app.schemas.errors import ERROR_RESPONSES

router = APIRouter(tags=["openai"])


@router.get("/v1/models", responses={k: ERROR_RESPONSES[k] for k in (401, 503)})
async def list_models(pipeline: PipelineDep, principal: PrincipalDep) -> Response:
    """Every model and alias the key may use, in OpenAI's list shape."""
    return json_response({"object": "list", "data": pipeline.router.cards(principal)})


@router.get("/v1/models/{model:path}", responses={k: ERROR_RESPONSES[k] for k in (401, 404, 503)})
async def retrieve_model(model: str, pipeline: PipelineDep, principal: PrincipalDep) -> Response:
    """One model (or alias) by id; 404 in OpenAI's shape for any other id, or one the key
    cannot use."""
    route = pipeline.router.resolve(model, principal, task=None)
    return json_response(route.card(model))
