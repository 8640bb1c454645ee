"""Small HTTP helpers shared by the routers: JSON responses and the OpenAPI shapes of the
generation routes (whose bodies the pipeline parses itself, after the key is checked)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import orjson
from fastapi import FastAPI
from pydantic import BaseModel
from starlette.responses import Response

from app.resilience.settings import LOWEST_PRIORITY
from app.schemas.errors import ERROR_RESPONSES

# Every generation route declares the error statuses it can answer with.
GENERATION_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: ERROR_RESPONSES[code] for code in (400, 401, 403, 404, 413, 422, 429, 503, 504)
}
_SSE: dict[str, Any] = {"text/event-stream": {}}
_JSON: dict[str, Any] = {"application/json": {}}
# Chat and completions: JSON, or with `stream: true` SSE.
STREAMING_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "JSON, or with `stream: true` a text/event-stream.",
        "content": {**_JSON, **_SSE},
    },
    **GENERATION_RESPONSES,
}
JSON_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "JSON.", "content": _JSON},
    **GENERATION_RESPONSES,
}
SSE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "A text/event-stream of `data:` events, then `[DONE]`.", "content": _SSE},
    **GENERATION_RESPONSES,
}
_PRIORITY_HEADER = {
    "name": "X-Priority",
    "in": "header",
    "required": False,
    "description": "Lower the key's priority for this request (lower runs sooner).",
    "schema": {"type": "integer", "minimum": 0, "maximum": LOWEST_PRIORITY},
}


def json_response(body: dict[str, Any], status_code: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status_code, media_type="application/json")


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` for a route whose body the pipeline parses: the request model (see
    :func:`install_openapi`, which adds its schema) and the X-Priority header."""
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {
        "requestBody": {"required": True, "content": {"application/json": {"schema": ref}}},
        "parameters": [_PRIORITY_HEADER],
    }


def install_openapi(app: FastAPI, models: Sequence[type[BaseModel]]) -> None:
    """Add ``models`` (and the models they use) to the app's OpenAPI components."""
    default: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = default()
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        for model in models:
            schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(schema.pop("$defs", {}))
            schemas[model.__name__] = schema
        app.openapi_schema = document
        return document

    app.openapi = openapi  # type: ignore[method-assign]
