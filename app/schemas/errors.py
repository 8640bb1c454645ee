"""The OpenAI error envelope as a model, for the OpenAPI schema of every route."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


_DESCRIPTIONS = {
    400: "Invalid request (body, parameter, or context length).",
    401: "Missing or invalid API key.",
    403: "The key may not use this model or route.",
    404: "Unknown model or route.",
    413: "Request body too large.",
    422: "Unprocessable request.",
    429: "Rate limited or queue full; see Retry-After.",
    503: "Engine not ready, unavailable or draining; see Retry-After.",
    504: "The request passed its deadline.",
}

ERROR_RESPONSES: dict[int, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text} for code, text in _DESCRIPTIONS.items()
}
