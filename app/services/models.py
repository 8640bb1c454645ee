"""Which models a key may name: the served model's id, its card, and the 404 for others."""

from __future__ import annotations

from typing import Any

from app.auth.keys import Principal
from app.engine.protocol import EngineClient
from app.errors import ModelNotFoundError


class ModelCatalog:
    """The models this gateway serves (today: the one engine's)."""

    def __init__(self, engine: EngineClient) -> None:
        self.engine = engine

    def resolve(self, name: str | None, principal: Principal) -> str:
        """The served id for ``name`` (``None``: the default); 404 for any other name or
        one the key may not use — as OpenAI does, a model a key cannot see does not exist."""
        served = self.engine.model_info.served_name
        if (name is not None and name != served) or not principal.can_use(served):
            raise ModelNotFoundError(
                f"The model `{name}` does not exist or you do not have access to it.",
                param="model",
            )
        return served

    def cards(self, principal: Principal) -> list[dict[str, Any]]:
        """``GET /v1/models``: the cards of the models the key may use."""
        card = self.card()
        return [card] if principal.can_use(card["id"]) else []

    def card(self) -> dict[str, Any]:
        info = self.engine.model_info
        return {
            "id": info.served_name,
            "object": "model",
            "created": info.created,
            "owned_by": "llm-gateway",
            "max_model_len": info.max_model_len,
        }
