"""Validate bodies against OpenAI's published schemas (vendored subset, see openai_spec/)."""

from __future__ import annotations

import copy
import json
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

SPEC = Path(__file__).parents[1] / "openai_spec" / "schemas.json"


@cache
def _document() -> dict[str, Any]:
    return _nullable_to_json_schema(json.loads(SPEC.read_text()))  # type: ignore[no-any-return]


def _nullable_to_json_schema(node: Any) -> Any:
    """OpenAI's spec still says ``nullable: true`` (OpenAPI 3.0), which JSON Schema ignores:
    rewrite it as a ``null`` type (and a ``None`` enum member) so validation means the same."""
    if isinstance(node, list):
        return [_nullable_to_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: _nullable_to_json_schema(value) for key, value in node.items()}
    if node.pop("nullable", False):
        if isinstance(node.get("type"), str):
            node["type"] = [node["type"], "null"]
        if "enum" in node:
            node["enum"] = [*node["enum"], None]
    return node


def _validator(schema: dict[str, Any]) -> Draft202012Validator:
    # Refs are "#/components/schemas/X": resolve them against the vendored document.
    root = {**_document(), **schema}
    return Draft202012Validator(root)


def validate(name: str, body: Any) -> None:
    """Raise ``jsonschema.ValidationError`` unless ``body`` matches schema ``name``."""
    _validator(_document()["components"]["schemas"][name]).validate(body)


def validate_completion_chunk(body: Any) -> None:
    """A streamed completion chunk: the spec shares the non-streamed shape, whose
    ``finish_reason`` enum forgets the ``null`` that OpenAI itself streams until the end."""
    schema = copy.deepcopy(_document()["components"]["schemas"]["CreateCompletionResponse"])
    reason = schema["properties"]["choices"]["items"]["properties"]["finish_reason"]
    reason["enum"] = [*reason["enum"], None]
    reason["type"] = ["string", "null"]
    _validator(schema).validate(body)
