"""/v1/chat/completions through the OpenAI SDK against the real engine."""

from __future__ import annotations

import json

from openai import OpenAI

from tests.support.spec import validate

HELLO = [{"role": "user", "content": "Hi"}]


def test_chat_completion_matches_openai_schema(client: OpenAI, model_id: str) -> None:
    """A plain chat completion has OpenAI's shape, usage counts and a finish reason."""
    reply = client.chat.completions.create(model=model_id, messages=HELLO, max_tokens=16)
    validate("CreateChatCompletionResponse", reply.model_dump(exclude_unset=True))
    assert reply.object == "chat.completion"
    assert reply.choices[0].message.role == "assistant"
    assert reply.usage is not None and reply.usage.prompt_tokens > 0
    assert 1 <= reply.usage.completion_tokens <= 16
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_max_tokens_caps_completion_with_length_reason(client: OpenAI, model_id: str) -> None:
    """max_tokens caps usage.completion_tokens exactly when EOS is ignored."""
    reply = client.chat.completions.create(
        model=model_id, messages=HELLO, max_tokens=5, extra_body={"ignore_eos": True}
    )
    assert reply.usage is not None and reply.usage.completion_tokens == 5
    assert reply.choices[0].finish_reason == "length"


def test_max_completion_tokens_supersedes_max_tokens(client: OpenAI, model_id: str) -> None:
    """max_completion_tokens wins over the deprecated max_tokens."""
    reply = client.chat.completions.create(
        model=model_id,
        messages=HELLO,
        max_tokens=20,
        max_completion_tokens=3,
        extra_body={"ignore_eos": True},
    )
    assert reply.usage is not None and reply.usage.completion_tokens == 3


def test_seed_with_temperature_zero_is_repeatable(client: OpenAI, model_id: str) -> None:
    """The same seed and temperature 0 give identical text twice."""
    texts = {
        client.chat.completions.create(
            model=model_id, messages=HELLO, max_tokens=24, temperature=0, seed=7
        )
        .choices[0]
        .message.content
        for _ in range(2)
    }
    assert len(texts) == 1


def test_seeded_sampling_is_repeatable(client: OpenAI, model_id: str) -> None:
    """Sampling at temperature 1 with a seed gives the same text twice."""
    kwargs = {"model": model_id, "messages": HELLO, "max_tokens": 24, "temperature": 1.0}
    first = client.chat.completions.create(seed=123, **kwargs).choices[0].message.content
    again = client.chat.completions.create(seed=123, **kwargs).choices[0].message.content
    assert first == again


def test_n_returns_distinct_indexed_choices(client: OpenAI, model_id: str) -> None:
    """n=2 gives two choices indexed 0 and 1, and usage counts both."""
    reply = client.chat.completions.create(
        model=model_id, messages=HELLO, n=2, max_tokens=8, extra_body={"ignore_eos": True}
    )
    assert sorted(c.index for c in reply.choices) == [0, 1]
    assert reply.usage is not None and reply.usage.completion_tokens == 16


def test_stop_string_is_honoured(client: OpenAI, model_id: str) -> None:
    """A stop string taken from the greedy output cuts the text before it, reason 'stop'."""
    kwargs = {"model": model_id, "messages": HELLO, "temperature": 0, "max_tokens": 40}
    full = client.chat.completions.create(**kwargs).choices[0].message.content or ""
    stop = full[len(full) // 2 :][:3]
    assert stop.strip(), f"greedy output too short to pick a stop string: {full!r}"
    reply = client.chat.completions.create(stop=[stop], **kwargs)
    assert reply.choices[0].finish_reason == "stop"
    text = reply.choices[0].message.content or ""
    assert stop not in text and full.startswith(text)


def test_content_parts_equal_plain_string(client: OpenAI, model_id: str) -> None:
    """Text content parts are joined and behave like the same plain string."""
    parts = [
        {"role": "user", "content": [{"type": "text", "text": "H"}, {"type": "text", "text": "i"}]}
    ]
    common = {"model": model_id, "temperature": 0, "max_tokens": 12}
    as_parts = client.chat.completions.create(messages=parts, **common)
    as_text = client.chat.completions.create(messages=HELLO, **common)
    assert as_parts.choices[0].message.content == as_text.choices[0].message.content


def test_logprobs_with_top_alternatives(client: OpenAI, model_id: str) -> None:
    """logprobs/top_logprobs give one entry per token with k alternatives, in spec shape."""
    reply = client.chat.completions.create(
        model=model_id,
        messages=HELLO,
        max_tokens=4,
        logprobs=True,
        top_logprobs=3,
        extra_body={"ignore_eos": True},
    )
    validate("CreateChatCompletionResponse", reply.model_dump(exclude_unset=True))
    content = reply.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content is not None and len(content) == 4
    assert all(len(item.top_logprobs) == 3 and item.logprob <= 0 for item in content)


def test_penalties_and_vllm_extras_are_accepted(client: OpenAI, model_id: str) -> None:
    """OpenAI penalties, user, and vLLM's top_k/min_p/min_tokens/repetition_penalty work."""
    reply = client.chat.completions.create(
        model=model_id,
        messages=HELLO,
        max_tokens=6,
        presence_penalty=0.5,
        frequency_penalty=0.5,
        top_p=0.9,
        user="tester",
        extra_body={"top_k": 5, "min_p": 0.05, "min_tokens": 6, "repetition_penalty": 1.2},
    )
    assert reply.usage is not None and reply.usage.completion_tokens == 6


def test_unknown_fields_are_ignored(client: OpenAI, model_id: str) -> None:
    """Fields we do not know are ignored, as OpenAI does."""
    reply = client.chat.completions.create(
        model=model_id, messages=HELLO, max_tokens=2, extra_body={"no_such_field": {"x": 1}}
    )
    assert reply.choices


def test_json_schema_response_format(client: OpenAI, model_id: str) -> None:
    """json_schema constrains the output through vLLM's structured outputs."""
    schema = {
        "type": "object",
        "properties": {"color": {"type": "string", "enum": ["red", "green"]}},
        "required": ["color"],
        "additionalProperties": False,
    }
    reply = client.chat.completions.create(
        model=model_id,
        messages=HELLO,
        max_tokens=40,
        response_format={"type": "json_schema", "json_schema": {"name": "c", "schema": schema}},
    )
    assert json.loads(reply.choices[0].message.content or "") in (
        {"color": "red"},
        {"color": "green"},
    )


def test_json_object_response_format(client: OpenAI, model_id: str) -> None:
    """json_object makes the output start as a JSON object."""
    reply = client.chat.completions.create(
        model=model_id, messages=HELLO, max_tokens=20, response_format={"type": "json_object"}
    )
    assert (reply.choices[0].message.content or "").lstrip().startswith("{")
