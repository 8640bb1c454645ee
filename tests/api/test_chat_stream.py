"""Streaming chat completions (SSE) through the OpenAI SDK and raw httpx."""

from __future__ import annotations

import json

import httpx
from openai import OpenAI

from tests.support.spec import validate

HELLO = [{"role": "user", "content": "Hi"}]


def test_stream_chunks_match_schema_and_end_with_usage(client: OpenAI, model_id: str) -> None:
    """Every chunk has the spec's shape; include_usage adds a final usage-only chunk."""
    chunks = list(
        client.chat.completions.create(
            model=model_id,
            messages=HELLO,
            max_tokens=8,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )
    )
    for chunk in chunks:
        validate("CreateChatCompletionStreamResponse", chunk.model_dump(exclude_unset=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 8
    assert chunks[-2].choices[0].finish_reason == "length"
    assert all(c.usage is None for c in chunks[:-1])


def test_stream_text_equals_non_stream_text(client: OpenAI, model_id: str) -> None:
    """Concatenated deltas equal the non-streamed text for the same greedy request."""
    kwargs = {"model": model_id, "messages": HELLO, "max_tokens": 20, "temperature": 0}
    full = client.chat.completions.create(**kwargs).choices[0].message.content
    streamed = "".join(
        c.choices[0].delta.content or ""
        for c in client.chat.completions.create(stream=True, **kwargs)
        if c.choices
    )
    assert streamed == full


def test_stream_wire_format_ends_with_done(http: httpx.Client, model_id: str) -> None:
    """The raw stream is text/event-stream 'data:' lines ending in 'data: [DONE]'."""
    body = {"model": model_id, "messages": HELLO, "max_tokens": 4, "stream": True}
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in events)
    assert events[-1] == "data: [DONE]"
    assert json.loads(events[0][6:])["object"] == "chat.completion.chunk"


def test_stream_n_two_interleaves_both_choices(client: OpenAI, model_id: str) -> None:
    """With n=2 the stream carries deltas and a finish reason for both indexes."""
    finished = {
        choice.index
        for chunk in client.chat.completions.create(
            model=model_id,
            messages=HELLO,
            n=2,
            max_tokens=5,
            stream=True,
            extra_body={"ignore_eos": True},
        )
        for choice in chunk.choices
        if choice.finish_reason
    }
    assert finished == {0, 1}


def test_stream_logprobs(client: OpenAI, model_id: str) -> None:
    """Streamed chunks carry logprobs when asked."""
    entries = [
        item
        for chunk in client.chat.completions.create(
            model=model_id,
            messages=HELLO,
            max_tokens=3,
            stream=True,
            logprobs=True,
            top_logprobs=2,
            extra_body={"ignore_eos": True},
        )
        for choice in chunk.choices
        if choice.logprobs and choice.logprobs.content
        for item in choice.logprobs.content
    ]
    assert len(entries) == 3 and all(len(e.top_logprobs) == 2 for e in entries)
