"""What goes to an upstream and what comes back, as pure functions."""

from __future__ import annotations

from app.deployments.wire import chat_step, completion_path, completion_step, request_body
from app.engine.protocol import ChatPrompt, Job, SamplingOptions, TextPrompt


def _job(prompt: object, **options: object) -> Job:
    return Job("r1", prompt, [5, 6, 7], SamplingOptions(max_tokens=9, **options), 3)  # type: ignore[arg-type]


def test_tokens_mode_sends_token_ids_to_completions_and_asks_for_them_back() -> None:
    """Chat or not, ``send: tokens`` posts the gateway's ids to /completions, streamed,
    with return_token_ids; defaults stay out; priority only where declared."""
    job = _job(ChatPrompt([{"role": "user", "content": "hi"}]), temperature=0.0, seed=4)
    assert completion_path(job, "tokens") == "/completions"
    body = request_body(job, "upstream", "tokens", priority=False)
    assert body["prompt"] == [5, 6, 7] and body["return_token_ids"] is True
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert (body["model"], body["max_tokens"], body["temperature"], body["seed"]) == (
        "upstream", 9, 0.0, 4,
    )  # fmt: skip
    assert "priority" not in body and "top_k" not in body and "stop" not in body
    assert request_body(job, "upstream", "tokens", priority=True)["priority"] == 3


def test_request_mode_sends_messages_or_text() -> None:
    """``send: request``: chat messages to /chat/completions (logprobs the chat way), text
    prompts to /completions."""
    chat = _job(ChatPrompt([{"role": "user", "content": "hi"}]), logprobs=2)
    assert completion_path(chat, "request") == "/chat/completions"
    body = request_body(chat, "m", "request", priority=False)
    assert body["messages"] == [{"role": "user", "content": "hi"}]
    assert (body["logprobs"], body["top_logprobs"]) == (True, 2)
    text = request_body(_job(TextPrompt("once")), "m", "request", priority=False)
    assert text["prompt"] == "once" and "return_token_ids" not in text


def test_request_mode_declares_tools_for_the_upstream_template_and_reads_calls_here() -> None:
    """Tools go with ``tool_choice: none`` (the upstream renders them, the gateway reads the
    calls); history calls carry their arguments as JSON text again, as OpenAI's wire has."""
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": {"x": 1}}}
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": "4", "tool_call_id": "c1"},
    ]
    body = request_body(_job(ChatPrompt(messages, tools)), "m", "request", priority=False)
    assert body["tools"] == tools and body["tool_choice"] == "none"
    assert body["messages"][1]["tool_calls"][0]["function"] == {"name": "f", "arguments": '{"x":1}'}
    assert body["messages"][0] == messages[0] and body["messages"][2] == messages[2]
    assert "tools" not in request_body(_job(ChatPrompt(messages)), "m", "request", False)


def test_logit_bias_and_kept_special_tokens_reach_the_upstream() -> None:
    """Token-id keys as JSON strings (as OpenAI's wire has them); ``skip_special_tokens``
    only when it is not vLLM's default."""
    job = _job(TextPrompt("x"), logit_bias={7: -100.0}, skip_special_tokens=False)
    body = request_body(job, "m", "tokens", priority=False)
    assert body["logit_bias"] == {"7": -100.0} and body["skip_special_tokens"] is False
    plain = request_body(_job(TextPrompt("x")), "m", "tokens", priority=False)
    assert "logit_bias" not in plain and "skip_special_tokens" not in plain


def test_a_completion_chunk_becomes_a_step_with_exact_token_counts() -> None:
    chunk = {
        "choices": [
            {"index": 1, "text": "ab", "token_ids": [10, 11], "finish_reason": None,
             "logprobs": {"tokens": ["a", "b"], "token_logprobs": [-0.1, -0.2],
                          "top_logprobs": [{"a": -0.1}, {"b": -0.2}]}},
        ]
    }  # fmt: skip
    (delta,) = completion_step(chunk).choices
    assert (delta.index, delta.text, delta.num_tokens, list(delta.token_ids or ())) == (
        1, "ab", 2, [10, 11],
    )  # fmt: skip
    assert delta.logprobs is not None and delta.logprobs[1].top == [("b", -0.2)]
    assert completion_step({"choices": [], "usage": {"completion_tokens": 3}}).choices == []


def test_finish_reasons_outside_openais_become_stop() -> None:
    """An upstream's ``abort`` or ``tool_calls`` never reaches a client as such."""
    chunk = {"choices": [{"index": 0, "text": "", "finish_reason": "abort"}]}
    assert completion_step(chunk).choices[0].finish_reason == "stop"
    chat = {"choices": [{"index": 0, "delta": {"content": "x"}, "finish_reason": "length"}]}
    step = chat_step(chat)
    assert step.finished and step.choices[0].text == "x" and step.choices[0].num_tokens == 1
