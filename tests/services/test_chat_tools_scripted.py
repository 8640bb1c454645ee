"""Tool calls and logit_bias through the whole pipeline, fast and deterministic: real HTTP,
a scripted engine at the ``EngineClient`` seam that writes a fixed call list one byte per
step. Each behaviour here also has a real-engine test (tests/api/test_chat_tools.py,
tests/api/test_logit_bias.py, tests/e2e/test_tools_pipeline.py)."""

from __future__ import annotations

import json
from typing import Any

import httpx

from app.schemas.tools import MAX_PARALLEL_TOOL_CALLS
from tests.services.test_pipeline import serving
from tests.support.scripted_engine import ScriptedEngine
from tests.support.servers import LoopThread, RunningServer
from tests.support.spec import validate
from tests.support.tools import TIME_PARAMETERS, TOOLS, WEATHER_QUESTION, join_stream_calls, named

LISTED = b'[{"name":"get_time","arguments":{"zone":"cet"}},{"name":"get_weather","arguments":{}}]'


def _body(**extra: Any) -> dict[str, Any]:
    return {"model": "tiny-llama", "messages": WEATHER_QUESTION, "max_tokens": len(LISTED), **extra}


def _sse(srv: RunningServer, body: dict[str, Any]) -> list[dict[str, Any]]:
    with httpx.stream("POST", srv.url + "/v1/chat/completions", json=body, timeout=30) as reply:
        assert reply.status_code == 200
        data = [line[6:] for line in reply.iter_lines() if line.startswith("data: {")]
    chunks = [json.loads(item) for item in data]
    for chunk in chunks:
        validate("CreateChatCompletionStreamResponse", chunk)
    return chunks


def test_required_stream_names_each_call_once_then_streams_its_arguments(
    loop_thread: LoopThread,
) -> None:
    """Byte by byte, each call's first delta comes once its name is complete; the
    argument fragments join into the text the engine wrote, as the non-streamed answer."""
    engine = ScriptedEngine(answer=LISTED)
    with serving(loop_thread, engine) as srv:
        chunks = _sse(srv, _body(tools=TOOLS, tool_choice="required", n=2, stream=True))
        whole = httpx.post(
            srv.url + "/v1/chat/completions", json=_body(tools=TOOLS, tool_choice="required")
        ).json()
    validate("CreateChatCompletionResponse", whole)
    expected = [("get_time", '{"zone":"cet"}'), ("get_weather", "{}")]
    for choice in (0, 1):
        calls = join_stream_calls(chunks, choice)
        assert [(c["function"]["name"], c["function"]["arguments"]) for c in calls] == expected
    ids = {c["id"] for choice in (0, 1) for c in join_stream_calls(chunks, choice)}
    assert len(ids) == 4
    message = whole["choices"][0]["message"]
    got = [(c["function"]["name"], c["function"]["arguments"]) for c in message["tool_calls"]]
    assert got == expected and message["content"] is None
    # max_tokens == the answer's length: the engine says "length", which wins over tool_calls
    assert whole["choices"][0]["finish_reason"] == "length"


def test_forced_calls_reach_the_engine_as_its_structured_output_schema(
    loop_thread: LoopThread,
) -> None:
    """A named function: the engine is given that function's parameters schema; required:
    the choice list, capped at MAX_PARALLEL_TOOL_CALLS (1 without parallel calls)."""
    engine = ScriptedEngine(answer=b'{"zone":"cet"}')
    with serving(loop_thread, engine) as srv:
        url = srv.url + "/v1/chat/completions"
        for extra in (
            {"tool_choice": named("get_time")},
            {"tool_choice": "required"},
            {"tool_choice": "required", "parallel_tool_calls": False},
        ):
            assert httpx.post(url, json=_body(tools=TOOLS, **extra)).status_code == 200
    named_options, parallel, single = [call[2] for call in engine.calls_of("generate")]
    assert named_options.json_schema == TIME_PARAMETERS
    assert parallel.json_schema["maxItems"] == MAX_PARALLEL_TOOL_CALLS
    assert single.json_schema["maxItems"] == 1 and single.json_schema["minItems"] == 1
    names = [b["properties"]["name"]["enum"] for b in single.json_schema["items"]["anyOf"]]
    assert names == [["get_weather"], ["get_time"]]


def test_logit_bias_is_checked_before_the_engine_and_passed_to_it(
    loop_thread: LoopThread,
) -> None:
    """An id outside the vocabulary is refused before anything reaches the engine; valid
    biases arrive in the engine's options keyed by integer token id."""
    engine = ScriptedEngine()
    with serving(loop_thread, engine) as srv:
        url = srv.url + "/v1/completions"
        body = {"model": "tiny-llama", "prompt": "hi", "max_tokens": 2}
        refused = httpx.post(url, json={**body, "logit_bias": {"256": 1}})
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "logit_bias"
        assert not engine.calls_of("encode_prompt")
        assert httpx.post(url, json={**body, "logit_bias": {"5": 100, "7": -2.5}}).is_success
    (call,) = engine.calls_of("generate")
    assert call[2].logit_bias == {5: 100.0, 7: -2.5}
