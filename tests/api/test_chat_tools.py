"""Function calling on /v1/chat/completions against the real engine (embedded model):
forced calls (a named function, ``required``) through the OpenAI SDK and raw HTTP, every
body validated against OpenAI's schemas."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from openai import OpenAI

from app.engine.manager import EngineManager
from app.schemas.tools import MAX_PARALLEL_TOOL_CALLS
from tests.support.spec import validate
from tests.support.tools import (
    TIME_PARAMETERS,
    TOOLS,
    WEATHER_QUESTION,
    check_call,
    join_stream_calls,
    named,
    tool,
)

FORCED = {"temperature": 0, "max_tokens": 60}


def _chat(http: httpx.Client, model_id: str, **body: Any) -> dict[str, Any]:
    payload = {"model": model_id, "messages": WEATHER_QUESTION, **FORCED, **body}
    response = http.post("/v1/chat/completions", json=payload)
    assert response.status_code == 200, response.text
    reply: dict[str, Any] = response.json()
    validate("CreateChatCompletionResponse", reply)
    return reply


def _stream(http: httpx.Client, model_id: str, **body: Any) -> list[dict[str, Any]]:
    payload = {"model": model_id, "messages": WEATHER_QUESTION, **FORCED, **body, "stream": True}
    with http.stream("POST", "/v1/chat/completions", json=payload) as response:
        assert response.status_code == 200
        lines = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    chunks = [json.loads(line) for line in lines[:-1]]
    for chunk in chunks:
        validate("CreateChatCompletionStreamResponse", chunk)
    return chunks


def test_sdk_named_function_is_called_with_valid_arguments(client: OpenAI, model_id: str) -> None:
    """A named tool_choice: one call of that function, JSON arguments valid against its
    parameters schema, content null and finish_reason stop (as OpenAI answers it)."""
    reply = client.chat.completions.create(
        model=model_id,
        messages=WEATHER_QUESTION,  # type: ignore[arg-type]
        tools=TOOLS,  # type: ignore[arg-type]
        tool_choice=named("get_time"),  # type: ignore[arg-type]
        **FORCED,  # type: ignore[arg-type]
    )
    validate("CreateChatCompletionResponse", reply.model_dump(exclude_unset=True))
    choice = reply.choices[0]
    assert choice.finish_reason == "stop" and choice.message.content is None
    (call,) = choice.message.tool_calls or []
    assert check_call(call.model_dump())["name"] == "get_time"


def test_sdk_required_calls_one_declared_function(client: OpenAI, model_id: str) -> None:
    """required without parallel calls: exactly one call of a declared function, valid
    arguments, finish_reason tool_calls."""
    reply = client.chat.completions.create(
        model=model_id,
        messages=WEATHER_QUESTION,  # type: ignore[arg-type]
        tools=TOOLS,  # type: ignore[arg-type]
        tool_choice="required",
        parallel_tool_calls=False,
        **FORCED,  # type: ignore[arg-type]
    )
    validate("CreateChatCompletionResponse", reply.model_dump(exclude_unset=True))
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls or []
    check_call(call.model_dump())


def test_parallel_required_calls_are_each_valid(http: httpx.Client, model_id: str) -> None:
    """With parallel calls (the default) the model may call several times, up to the cap;
    every call is complete and valid, with its own id."""
    reply = _chat(http, model_id, tools=TOOLS, tool_choice="required", max_tokens=450)
    choice = reply["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    calls = choice["message"]["tool_calls"]
    assert 1 <= len(calls) <= MAX_PARALLEL_TOOL_CALLS
    assert [check_call(call) for call in calls]
    assert len({call["id"] for call in calls}) == len(calls)


@pytest.mark.parametrize(
    "choice",
    [
        pytest.param(named("get_weather"), id="named"),
        pytest.param("required", id="required"),
    ],
)
def test_stream_reassembles_to_the_non_streamed_call(
    http: httpx.Client, model_id: str, choice: Any
) -> None:
    """Streamed: the call is named (index, id, type, name) once, then argument fragments
    follow; joined they are the non-streamed answer's call (greedy: the same text)."""
    body = {"tools": TOOLS, "tool_choice": choice, "parallel_tool_calls": False}
    whole = _chat(http, model_id, **body)["choices"][0]
    chunks = _stream(http, model_id, **body)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[0]["choices"][0]["delta"]["content"] is None
    assert all("content" not in c["choices"][0]["delta"] for c in chunks[1:])
    (streamed,) = join_stream_calls(chunks)
    (call,) = whole["message"]["tool_calls"]
    assert streamed["function"] == call["function"] and check_call(streamed)
    assert chunks[-1]["choices"][0]["finish_reason"] == whole["finish_reason"]
    fragments = [c for c in chunks if c["choices"][0]["delta"].get("tool_calls")]
    assert len(fragments) > 2, "arguments arrive in fragments, as they are generated"


def test_sdk_stream_accumulates_into_the_call(client: OpenAI, model_id: str) -> None:
    """The SDK's own stream helper assembles the streamed call (name, arguments)."""
    with client.chat.completions.stream(
        model=model_id,
        messages=WEATHER_QUESTION,  # type: ignore[arg-type]
        tools=TOOLS,  # type: ignore[arg-type]
        tool_choice="required",
        parallel_tool_calls=False,
        stream_options={"include_usage": True},
        **FORCED,  # type: ignore[arg-type]
    ) as stream:
        for event in stream:
            if event.type == "chunk":
                validate(
                    "CreateChatCompletionStreamResponse", event.chunk.model_dump(exclude_unset=True)
                )
        final = stream.get_final_completion()
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls or []
    check_call(call.model_dump())
    assert final.usage is not None and final.usage.completion_tokens > 0


def test_n_choices_each_get_their_own_calls(http: httpx.Client, model_id: str) -> None:
    """n=2 streamed: each choice names its own call with its own id."""
    body = {"tools": TOOLS, "tool_choice": "required", "parallel_tool_calls": False}
    chunks = _stream(http, model_id, n=2, temperature=1.0, seed=5, **body)
    calls = [join_stream_calls(chunks, choice) for choice in (0, 1)]
    assert all(len(c) == 1 and check_call(c[0]) for c in calls)
    assert calls[0][0]["id"] != calls[1][0]["id"]


def test_none_answers_in_text_with_the_tools_in_the_prompt(
    http: httpx.Client, model_id: str, engine: EngineManager
) -> None:
    """tool_choice none: plain text, no calls; the template still shows the model the
    tools (the prompt is what the template renders with them)."""
    reply = _chat(http, model_id, tools=TOOLS, tool_choice="none", max_tokens=8)
    choice = reply["choices"][0]
    assert "tool_calls" not in choice["message"] and isinstance(choice["message"]["content"], str)
    assert choice["finish_reason"] in ("stop", "length")
    rendered = engine.encode_chat(WEATHER_QUESTION, TOOLS)
    assert (
        reply["usage"]["prompt_tokens"] == len(rendered) > len(engine.encode_chat(WEATHER_QUESTION))
    )


def test_auto_without_a_parser_answers_in_text(http: httpx.Client, model_id: str) -> None:
    """Without TOOL_CALL_PARSER, auto (the default with tools) is answered as text."""
    reply = _chat(http, model_id, tools=TOOLS, max_tokens=8)
    message = reply["choices"][0]["message"]
    assert "tool_calls" not in message and isinstance(message["content"], str)


ARGUMENTS = {"zone": "cet"}
HISTORY: list[dict[str, Any]] = [
    *WEATHER_QUESTION,
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_time", "arguments": json.dumps(ARGUMENTS)},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "12:00"},
]


def test_the_tool_requests_sent_here_are_openai_shaped() -> None:
    """The tools, tool choices and history these tests send match OpenAI's request
    schemas: what is served here is what the SDK and agent frameworks send."""
    for declared in TOOLS:
        validate("ChatCompletionTool", declared)
    for choice in ("none", "auto", "required", named("get_time")):
        validate("ChatCompletionToolChoiceOption", choice)
    validate("ChatCompletionRequestAssistantMessage", HISTORY[1])
    validate("ChatCompletionRequestToolMessage", HISTORY[2])


def test_history_with_calls_and_results_renders_as_the_template_shows_them(
    client: OpenAI, model_id: str, engine: EngineManager
) -> None:
    """An assistant turn with tool_calls (content null) and the tool's result go to the
    template as HF templates expect them: arguments as an object, the tool_call_id kept."""
    reply = client.chat.completions.create(
        model=model_id, messages=HISTORY, tools=TOOLS, max_tokens=4  # type: ignore[arg-type]
    )
    templated = [
        WEATHER_QUESTION[0],
        {**HISTORY[1], "content": "", "tool_calls": [_with_arguments(HISTORY[1], ARGUMENTS)]},
        HISTORY[2],
    ]
    rendered = engine.decode(engine.encode_chat(templated, TOOLS))
    assert '<tool_call>\n{"name": "get_time", "arguments": {"zone": "cet"}}' in rendered
    assert "<tool_response>\n12:00\n</tool_response>" in rendered
    assert reply.usage is not None
    assert reply.usage.prompt_tokens == len(engine.encode_chat(templated, TOOLS))


def _with_arguments(message: dict[str, Any], arguments: dict[str, Any]) -> dict[str, Any]:
    (call,) = message["tool_calls"]
    return {**call, "function": {**call["function"], "arguments": arguments}}


def test_a_function_without_parameters_is_called_with_an_empty_object(
    http: httpx.Client, model_id: str
) -> None:
    """No parameters schema: the arguments are exactly {}."""
    tools = [{"type": "function", "function": {"name": "ping"}}, tool("get_time")]
    reply = _chat(http, model_id, tools=tools, tool_choice=named("ping"))
    (call,) = reply["choices"][0]["message"]["tool_calls"]
    assert call["function"] == {"name": "ping", "arguments": "{}"}


def test_defs_references_resolve_in_a_required_choice(http: httpx.Client, model_id: str) -> None:
    """A parameters schema using $defs still constrains the call inside the choice list."""
    parameters = {
        "type": "object",
        "properties": {"zone": {"$ref": "#/$defs/zone"}},
        "required": ["zone"],
        "additionalProperties": False,
        "$defs": {"zone": TIME_PARAMETERS["properties"]["zone"]},
    }
    tools = [{"type": "function", "function": {"name": "get_time", "parameters": parameters}}]
    reply = _chat(http, model_id, tools=tools, tool_choice="required", parallel_tool_calls=False)
    (call,) = reply["choices"][0]["message"]["tool_calls"]
    assert json.loads(call["function"]["arguments"])["zone"] in ("utc", "cet")
