"""Vendor the parts of OpenAI's published spec that our responses are validated against.

Run ``python tests/openai_spec/extract.py [path/to/openai-openapi.yaml]`` to refresh
``schemas.json`` (default source: ``../shared/openai-openapi.yaml``). The subset keeps every
schema our tests name plus everything they reference, so ``$ref``s resolve within it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

ROOTS = [
    "CreateChatCompletionResponse",
    "CreateChatCompletionStreamResponse",
    "CreateCompletionResponse",
    "ListModelsResponse",
    "Model",
    "ErrorResponse",
    "CreateEmbeddingRequest",
    "CreateEmbeddingResponse",
    # Request parts the tool tests send, checked to be OpenAI's shapes.
    "ChatCompletionTool",
    "ChatCompletionToolChoiceOption",
    "ChatCompletionRequestAssistantMessage",
    "ChatCompletionRequestToolMessage",
]
HERE = Path(__file__).parent
DEFAULT_SOURCE = HERE.parents[2] / "shared" / "openai-openapi.yaml"
PREFIX = "#/components/schemas/"


def _refs(node: Any) -> set[str]:
    if isinstance(node, dict):
        found = (
            {node["$ref"][len(PREFIX) :]} if str(node.get("$ref", "")).startswith(PREFIX) else set()
        )
        return found.union(*(_refs(value) for value in node.values()))
    if isinstance(node, list):
        return set().union(*(_refs(item) for item in node))
    return set()


def extract(spec: dict[str, Any]) -> dict[str, Any]:
    schemas, wanted, done = spec["components"]["schemas"], list(ROOTS), {}
    while wanted:
        name = wanted.pop()
        if name not in done:
            done[name] = schemas[name]
            wanted.extend(_refs(schemas[name]))
    return {"info": spec["info"]["version"], "components": {"schemas": dict(sorted(done.items()))}}


if __name__ == "__main__":
    source = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_SOURCE
    spec = yaml.load(source.read_text(), Loader=yaml.CSafeLoader)
    (HERE / "schemas.json").write_text(json.dumps(extract(spec), indent=1, sort_keys=True) + "\n")
    print(f"wrote {HERE / 'schemas.json'} from {source}")
