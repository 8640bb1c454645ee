"""``GET /v1/models`` and ``GET /v1/models/{model}``."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from app.api.http import json_response
from app.deps import GenerationDep, PrincipalDep
from app.schemas.errors import ERROR_RESPONSES

router = APIRouter(tags=["openai"])


def _model_card(service: GenerationDep) -> dict[str, object]:
    info = service.engine.model_info
    return {
        "id": info.served_name,
        "object": "model",
        "created": info.created,
        "owned_by": "llm-gateway",
        "max_model_len": info.max_model_len,
    }


@router.get("/v1/models", responses={k: ERROR_RESPONSES[k] for k in (401, 503)})
async def list_models(service: GenerationDep, principal: PrincipalDep) -> Response:
    """The served model, in OpenAI's list shape (only what the key may use)."""
    card = _model_card(service)
    data = [card] if principal.can_use(str(card["id"])) else []
    return json_response({"object": "list", "data": data})


@router.get("/v1/models/{model:path}", responses={k: ERROR_RESPONSES[k] for k in (401, 404, 503)})
async def retrieve_model(model: str, service: GenerationDep, principal: PrincipalDep) -> Response:
    """One model by id; 404 in OpenAI's shape for any other id (or one the key cannot use)."""
    service.check_model(model, principal)
    return json_response(_model_card(service))
