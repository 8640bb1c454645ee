"""``tool_choice: auto`` read by vLLM's tool parsers (TOOL_CALL_PARSER), on the real engine.

The embedded model never writes a tool call of its own accord, so the xlam tests make it
write one in xlam's syntax (a JSON list of ``{"name", "arguments"}``) through
``response_format``: the calls then come from real generated text, parsed by vLLM's
parser, as they would from a model trained to call tools.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from openai import OpenAI

from app.engine.manager import EngineManager
from app.engine.settings import EngineSettings
from app.main import create_app
from tests.conftest import make_settings
from tests.support.servers import LoopThread, RunningServer, start_server, stop_server
from tests.support.spec import validate
from tests.support.tools import (
    TIME_PARAMETERS,
    TOOLS,
    WEATHER_QUESTION,
    check_call,
    join_stream_calls,
)


def _calls_format(count: int) -> dict[str, Any]:
    """response_format making the model write ``count`` get_time calls, xlam's way."""
    call = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "enum": ["get_time"]},
            "arguments": TIME_PARAMETERS,
        },
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }
    schema = {"type": "array", "items": call, "minItems": count, "maxItems": count}
    return {"type": "json_schema", "json_schema": {"name": "calls", "schema": schema}}


AUTO = {"tools": TOOLS, "tool_choice": "auto", "temperature": 0, "max_tokens": 80}


def _serving(loop: LoopThread, engine: EngineManager, parser: str) -> RunningServer:
    settings = make_settings()
    settings.engine.tool_call_parser = parser
    return start_server(loop, create_app(settings, engine))


@pytest.fixture(scope="module")
def xlam(loop_thread: LoopThread, engine: EngineManager) -> Iterator[RunningServer]:
    running = _serving(loop_thread, engine, "xlam")
    yield running
    stop_server(running)


def _post(server: RunningServer, **body: Any) -> dict[str, Any]:
    payload = {"model": "tiny-llama", "messages": WEATHER_QUESTION, **AUTO, **body}
    response = httpx.post(server.url + "/v1/chat/completions", json=payload, timeout=60)
    assert response.status_code == 200, response.text
    reply: dict[str, Any] = response.json()
    validate("CreateChatCompletionResponse", reply)
    return reply


def test_auto_calls_come_from_the_parsed_text(xlam: RunningServer) -> None:
    """The parser turns the model's text into calls: ids ours, finish_reason tool_calls."""
    choice = _post(xlam, response_format=_calls_format(1))["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    (call,) = choice["message"]["tool_calls"]
    assert check_call(call)["name"] == "get_time"


def test_auto_stream_joins_into_the_non_streamed_calls(xlam: RunningServer) -> None:
    """Streamed through the SDK: chunks in the spec's shape, the call named once, and the
    joined arguments equal to the non-streamed answer's."""
    whole = _post(xlam, response_format=_calls_format(1))["choices"][0]
    with OpenAI(base_url=xlam.base_url, api_key="k", max_retries=0) as sdk:
        stream = sdk.chat.completions.create(
            model="tiny-llama",
            messages=WEATHER_QUESTION,  # type: ignore[arg-type]
            stream=True,
            response_format=_calls_format(1),  # type: ignore[arg-type]
            **AUTO,  # type: ignore[arg-type]
        )
        chunks = [chunk.model_dump(exclude_unset=True) for chunk in stream]
    for chunk in chunks:
        validate("CreateChatCompletionStreamResponse", chunk)
    (call,) = join_stream_calls(chunks)
    (expected,) = whole["message"]["tool_calls"]
    assert json.loads(call["function"]["arguments"]) == json.loads(
        expected["function"]["arguments"]
    )
    assert call["function"]["name"] == expected["function"]["name"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_parallel_calls_false_keeps_the_first_call(xlam: RunningServer) -> None:
    """Two parsed calls, parallel_tool_calls false: the answer holds the first only."""
    both = _post(xlam, response_format=_calls_format(2))["choices"][0]["message"]["tool_calls"]
    one = _post(xlam, response_format=_calls_format(2), parallel_tool_calls=False)
    (first,) = one["choices"][0]["message"]["tool_calls"]
    assert len(both) == 2 and first["function"] == both[0]["function"]


def test_auto_text_without_a_call_stays_content(xlam: RunningServer) -> None:
    """A model that answers in prose under auto: content, no calls, finish stop/length."""
    choice = _post(xlam, max_tokens=6)["choices"][0]
    assert "tool_calls" not in choice["message"]
    assert isinstance(choice["message"]["content"], str)
    assert choice["finish_reason"] in ("stop", "length")


def test_hermes_parser_reads_prose_as_content(
    loop_thread: LoopThread, engine: EngineManager
) -> None:
    """hermes (the <tool_call> syntax the embedded template shows) on prose: content."""
    running = _serving(loop_thread, engine, "hermes")
    try:
        choice = _post(running, max_tokens=6, stream=False)["choices"][0]
    finally:
        stop_server(running)
    assert "tool_calls" not in choice["message"] and choice["message"]["content"]


def test_a_parser_the_model_cannot_use_is_refused(engine: EngineManager) -> None:
    """llama3_json needs a token the embedded tokenizer lacks: ValueError saying so (what
    start-up runs before serving, see below)."""
    with pytest.raises(ValueError, match=r"llama3_json.*does not fit"):
        engine.tool_parser("llama3_json", [])


def test_an_unknown_parser_fails_start_up_before_the_model_loads(loop_thread: LoopThread) -> None:
    """TOOL_CALL_PARSER with a typo: start() raises at once, naming the known parsers."""
    manager = EngineManager(EngineSettings(tool_call_parser="hermess"))
    with pytest.raises(ValueError, match=r"hermess.*hermes"):
        loop_thread.run(manager.start(), timeout=30)
    assert not manager.is_ready
