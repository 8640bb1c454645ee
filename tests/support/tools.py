"""Function tools for tests: enum-only parameters, which the embedded model completes in a
few dozen tokens under structured outputs, and checks on the calls that come back."""

from __future__ import annotations

import json
from typing import Any

import jsonschema

WEATHER_PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "enum": ["Paris", "Oslo"]},
        "unit": {"type": "string", "enum": ["c", "f"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TIME_PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {"zone": {"type": "string", "enum": ["utc", "cet"]}},
    "required": ["zone"],
    "additionalProperties": False,
}
SCHEMAS = {"get_weather": WEATHER_PARAMETERS, "get_time": TIME_PARAMETERS}


def tool(name: str) -> dict[str, Any]:
    parameters = SCHEMAS[name]
    description = f"{name.replace('_', ' ')}."
    return {
        "type": "function",
        "function": {"name": name, "description": description, "parameters": parameters},
    }


TOOLS = [tool("get_weather"), tool("get_time")]
WEATHER_QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]


def named(name: str) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name}}


def check_call(call: dict[str, Any]) -> dict[str, Any]:
    """A returned call (a message's tool_calls entry) as the issue promises it: an id, a
    declared name, and JSON arguments valid against that function's schema."""
    assert call["id"].startswith("call_") and len(call["id"]) > len("call_")
    assert call["type"] == "function"
    function = call["function"]
    assert function["name"] in SCHEMAS, function
    arguments = json.loads(function["arguments"])
    jsonschema.validate(arguments, SCHEMAS[function["name"]])
    return {"name": function["name"], "arguments": arguments}


def join_stream_calls(chunks: list[dict[str, Any]], choice: int = 0) -> list[dict[str, Any]]:
    """The calls of one choice rebuilt from ``delta.tool_calls``: id, type and name from a
    call's first delta (and only there), arguments from every delta, in order."""
    calls: dict[int, dict[str, Any]] = {}
    for chunk in chunks:
        for entry in chunk["choices"]:
            if entry["index"] != choice:
                continue
            for delta in entry["delta"].get("tool_calls") or ():
                index = delta["index"]
                if index not in calls:
                    assert {"id", "type"} <= delta.keys() and delta["function"]["name"]
                    calls[index] = {"id": delta["id"], "type": delta["type"], "function": {}}
                    calls[index]["function"] = {"name": delta["function"]["name"], "arguments": ""}
                else:
                    assert "id" not in delta and "name" not in delta.get("function", {})
                calls[index]["function"]["arguments"] += delta["function"].get("arguments", "")
    return [calls[index] for index in sorted(calls)]
