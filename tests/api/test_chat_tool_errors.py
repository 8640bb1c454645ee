"""Tool requests that cannot be served are refused with a 400 naming the parameter, in
OpenAI's error envelope (real engine; all but the last are refused before it is asked)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from app.schemas.tools import MAX_TOOL_SCHEMA_BYTES, MAX_TOOL_SCHEMA_DEPTH, MAX_TOOLS
from tests.support.spec import validate
from tests.support.tools import TOOLS, WEATHER_QUESTION, named, tool


def _function(name: str, parameters: Any = None) -> dict[str, Any]:
    function: dict[str, Any] = {"name": name}
    if parameters is not None:
        function["parameters"] = parameters
    return {"type": "function", "function": function}


def _nested(depth: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


def _assistant_call(role: str = "assistant") -> dict[str, Any]:
    call = {"id": "call_1", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}
    return {"role": role, "content": None, "tool_calls": [call]}


HUGE = {"type": "object", "description": "x" * MAX_TOOL_SCHEMA_BYTES}
CASES = [
    pytest.param({"tool_choice": named("nope")}, "tool_choice", "nope", id="undeclared-name"),
    pytest.param({"tools": None, "tool_choice": "required"}, "tool_choice", None, id="no-tools"),
    pytest.param({"tools": [tool("get_time")] * 2}, "tools", "unique", id="duplicate-names"),
    pytest.param({"tools": [_function(f"f{i}") for i in range(MAX_TOOLS + 1)]}, "tools", "128",
                 id="too-many-tools"),
    pytest.param({"tools": [_function("f", HUGE)]}, "tools.0.function.parameters", "bytes",
                 id="schema-too-large"),
    pytest.param({"tools": [_function("f", _nested(MAX_TOOL_SCHEMA_DEPTH))]},
                 "tools.0.function.parameters", "deeper", id="schema-too-deep"),
    pytest.param({"tools": [_function("bad name")]}, "tools.0.function.name", None, id="bad-name"),
    pytest.param({"tools": [{"type": "custom", "custom": {"name": "c"}}]}, "tools.0.type", None,
                 id="custom-tool"),
    pytest.param({"messages": [*WEATHER_QUESTION, {"role": "tool", "content": "1"}]},
                 "messages.1", "tool_call_id", id="tool-message-without-id"),
    pytest.param({"messages": [_assistant_call("user")]}, "messages.0", "assistant",
                 id="tool-calls-on-a-user-message"),
]  # fmt: skip


@pytest.mark.parametrize(("change", "param", "words"), CASES)
def test_bad_tool_requests_get_a_400_naming_the_parameter(
    http: httpx.Client, model_id: str, change: dict[str, Any], param: str, words: str | None
) -> None:
    """Each malformed tool request: 400, OpenAI's envelope, ``param`` set."""
    body = {"model": model_id, "messages": WEATHER_QUESTION, "tools": TOOLS, "max_tokens": 4}
    response = http.post("/v1/chat/completions", json={**body, **change})
    assert response.status_code == 400, response.text
    validate("ErrorResponse", response.json())
    error = response.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert words is None or words in error["message"]


def test_a_schema_the_grammar_cannot_compile_is_a_400(http: httpx.Client, model_id: str) -> None:
    """A parameters schema the engine's grammar compiler rejects is the client's error."""
    tools = [_function("f", {"type": "object", "properties": {"a": {"type": "nonsense"}}})]
    body = {"model": model_id, "messages": WEATHER_QUESTION, "max_tokens": 4}
    response = http.post(
        "/v1/chat/completions", json={**body, "tools": tools, "tool_choice": named("f")}
    )
    assert response.status_code == 400, response.text
    assert "nonsense" in response.json()["error"]["message"]


def test_history_arguments_that_are_not_json_still_render(
    http: httpx.Client, model_id: str
) -> None:
    """A past call whose arguments are not a JSON object (a truncated one, say) does not
    break the conversation: the template renders the text as it is."""
    message = _assistant_call()
    message["tool_calls"][0]["function"]["arguments"] = '{"zone": "ce'
    history = [
        *WEATHER_QUESTION,
        message,
        {"role": "tool", "tool_call_id": "call_1", "content": "?"},
    ]
    body = {"model": model_id, "messages": history, "tools": TOOLS, "max_tokens": 2}
    assert http.post("/v1/chat/completions", json=body).status_code == 200
