"""``POST /v1/embeddings``'s request, as OpenAI specifies it (``CreateEmbeddingRequest``),
plus the gateway's ``priority`` and ``timeout``."""

from __future__ import annotations

from typing import Literal, cast

from pydantic import Field, field_validator

from app.engine.protocol import TextPrompt, TokenPrompt
from app.schemas.base import GatewayModel
from app.schemas.openai import MAX_MODEL_CHARS, MAX_TOKEN_ID, MAX_USER_CHARS

EmbeddingInput = str | list[str] | list[int] | list[list[int]]


class EmbeddingRequest(GatewayModel):
    input: EmbeddingInput
    model: str = Field(min_length=1, max_length=MAX_MODEL_CHARS)
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = Field(default=None, max_length=MAX_USER_CHARS)
    priority: int | None = Field(default=None, ge=0, le=10)
    timeout: float | None = Field(default=None, gt=0)

    @field_validator("input")
    @classmethod
    def _inputs_not_empty(cls, value: EmbeddingInput) -> EmbeddingInput:
        """OpenAI refuses empty strings and empty token lists; token ids are unsigned."""
        items: list[object] = list(value) if isinstance(value, list) and value else [value]
        ids: list[int] = []
        for item in items:
            if item == "" or item == []:
                raise ValueError("inputs must not be empty (strings or token lists)")
            if isinstance(item, int):
                ids.append(item)
            elif isinstance(item, list):
                ids.extend(item)
        if not all(0 <= token <= MAX_TOKEN_ID for token in ids):
            raise ValueError(f"token ids must be between 0 and {MAX_TOKEN_ID}")
        return value

    def prompts(self) -> list[TextPrompt | TokenPrompt]:
        """One prompt per input: a string, a list of strings, one token list, or several."""
        value = self.input
        if isinstance(value, str):
            return [TextPrompt(value)]
        if isinstance(value[0], int):
            return [TokenPrompt(list(cast(list[int], value)))]
        items = cast(list[str | list[int]], value)
        return [TextPrompt(i) if isinstance(i, str) else TokenPrompt(list(i)) for i in items]


def count_inputs(data: object) -> int:
    """How many inputs a parsed body holds, before it is validated (a bound is cheap)."""
    value = data.get("input") if isinstance(data, dict) else None
    if not isinstance(value, list) or not value or isinstance(value[0], int):
        return 1
    return len(value)
