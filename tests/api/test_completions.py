"""/v1/completions through the OpenAI SDK against the real engine."""

from __future__ import annotations

from openai import OpenAI

from app.engine.manager import EngineManager
from app.services.pipeline import OFFLOAD_BODY_BYTES
from tests.support.spec import validate, validate_completion_chunk


def test_completion_matches_openai_schema(client: OpenAI, model_id: str) -> None:
    """A completion has OpenAI's shape and engine usage counts."""
    reply = client.completions.create(model=model_id, prompt="Once upon a time", max_tokens=16)
    validate("CreateCompletionResponse", reply.model_dump(exclude_unset=True))
    assert reply.object == "text_completion"
    assert reply.usage is not None and reply.usage.prompt_tokens > 0
    assert 1 <= reply.usage.completion_tokens <= 16


def test_default_max_tokens_is_sixteen(client: OpenAI, model_id: str) -> None:
    """Like OpenAI, completions default to max_tokens=16."""
    reply = client.completions.create(
        model=model_id, prompt="Once", extra_body={"ignore_eos": True}
    )
    assert reply.usage is not None and reply.usage.completion_tokens == 16
    assert reply.choices[0].finish_reason == "length"


def test_prompt_list_gives_choices_per_prompt_and_n(client: OpenAI, model_id: str) -> None:
    """Two prompts with n=2 give four choices indexed prompt*n+i; usage sums both prompts."""
    reply = client.completions.create(
        model=model_id,
        prompt=["The king", "A fox"],
        n=2,
        max_tokens=3,
        extra_body={"ignore_eos": True},
    )
    assert sorted(c.index for c in reply.choices) == [0, 1, 2, 3]
    assert reply.usage is not None and reply.usage.completion_tokens == 12
    single = client.completions.create(model=model_id, prompt="The king", max_tokens=1)
    other = client.completions.create(model=model_id, prompt="A fox", max_tokens=1)
    assert single.usage and other.usage
    assert reply.usage.prompt_tokens == single.usage.prompt_tokens + other.usage.prompt_tokens


def test_token_id_prompt_equals_text_prompt(
    client: OpenAI, model_id: str, engine: EngineManager
) -> None:
    """A prompt given as token ids generates what the same text generates."""
    common = {"model": model_id, "max_tokens": 8, "temperature": 0}
    token_ids = engine.encode_prompt("The fox")
    by_text = client.completions.create(prompt="The fox", **common)
    by_ids = client.completions.create(prompt=token_ids, **common)
    assert by_ids.choices[0].text == by_text.choices[0].text
    assert by_ids.usage is not None and by_ids.usage.prompt_tokens == len(token_ids)


def test_echo_prefixes_prompt(client: OpenAI, model_id: str) -> None:
    """echo=true returns the prompt followed by the completion."""
    reply = client.completions.create(
        model=model_id, prompt="Once upon a time", max_tokens=4, echo=True
    )
    assert reply.choices[0].text.startswith("Once upon a time")


def test_completion_logprobs_shape(client: OpenAI, model_id: str) -> None:
    """logprobs=k gives tokens, token_logprobs, k-wide top_logprobs and text offsets."""
    reply = client.completions.create(
        model=model_id, prompt="Once", max_tokens=4, logprobs=2, extra_body={"ignore_eos": True}
    )
    validate("CreateCompletionResponse", reply.model_dump(exclude_unset=True))
    logprobs = reply.choices[0].logprobs
    assert logprobs is not None and len(logprobs.tokens or []) == 4
    assert all(len(top) == 2 for top in logprobs.top_logprobs or [])
    assert "".join(logprobs.tokens or []) == reply.choices[0].text


def test_completion_stream(client: OpenAI, model_id: str) -> None:
    """Streamed completion chunks are in spec shape and add up to the greedy text."""
    kwargs = {"model": model_id, "prompt": "Once upon a time", "max_tokens": 12, "temperature": 0}
    full = client.completions.create(**kwargs).choices[0].text
    chunks = list(
        client.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs)
    )
    for chunk in chunks[:-1]:
        validate_completion_chunk(chunk.model_dump(exclude_unset=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == full
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens >= 1


def test_completion_stream_multiple_prompts(client: OpenAI, model_id: str) -> None:
    """A streamed list of prompts finishes every choice index."""
    finished = {
        choice.index
        for chunk in client.completions.create(
            model=model_id, prompt=["a", "b", "c"], max_tokens=3, stream=True
        )
        for choice in chunk.choices
        if choice.finish_reason
    }
    assert finished == {0, 1, 2}


def test_large_bodies_are_parsed_and_tokenized_off_the_loop_and_counted(
    client: OpenAI, model_id: str, engine: EngineManager
) -> None:
    """Bodies past OFFLOAD_BODY_BYTES (here padded with an ignored field) are parsed and
    tokenized in a worker thread, with the same token counts as on the loop, for
    completions and chat alike."""
    prompt = " Rumpelstiltskin" * 40
    padding = {"ignored_padding": "x" * OFFLOAD_BODY_BYTES}
    reply = client.completions.create(
        model=model_id, prompt=prompt, max_tokens=2, extra_body=padding
    )
    assert reply.usage is not None
    assert reply.usage.prompt_tokens == len(engine.encode_prompt(prompt))
    messages = [{"role": "user", "content": prompt}]
    chat = client.chat.completions.create(
        model=model_id, messages=messages, max_tokens=2, extra_body=padding  # type: ignore[arg-type]
    )
    assert chat.usage is not None
    assert chat.usage.prompt_tokens == len(engine.encode_chat(messages))
