"""What goes over the wire to an OpenAI-compatible upstream, and what comes back, as pure
functions: a job becomes a request body; a streamed chunk becomes an :class:`EngineStep`.

Two ways to send a job (``send`` in the deployment's spec):

- ``tokens``: ``/v1/completions`` with the gateway's token ids as the prompt and
  ``return_token_ids`` (vLLM's server and this gateway take both), so tokens are counted
  exactly and a stream can resume from them. Chat requests go the same way: the gateway
  already rendered the chat template.
- ``request``: the prompt as text — ``/v1/chat/completions`` with the messages, or
  ``/v1/completions`` with the text — for servers that take no token ids.
"""

from __future__ import annotations

from typing import Any

import orjson

from app.engine.protocol import (
    ChatPrompt,
    ChoiceDelta,
    EmbeddingJob,
    EngineStep,
    Job,
    SamplingOptions,
    TextPrompt,
    TokenLogprob,
)

FINISH_REASONS = ("stop", "length")


def completion_path(job: Job, send: str) -> str:
    return (
        "/chat/completions"
        if send == "request" and isinstance(job.prompt, ChatPrompt)
        else ("/completions")
    )


def request_body(job: Job, model: str, send: str, priority: bool) -> dict[str, Any]:
    """The streamed request for ``job`` (every request streams: progress is visible)."""
    body: dict[str, Any] = {"model": model, "stream": True}
    body["stream_options"] = {"include_usage": True}
    prompt = job.prompt
    chat = send == "request" and isinstance(prompt, ChatPrompt)
    if send == "tokens":
        body |= {"prompt": job.prompt_ids, "return_token_ids": True}
    elif isinstance(prompt, ChatPrompt):
        body["messages"] = [_openai_message(message) for message in prompt.messages]
        if prompt.tools:  # rendered there; read for calls here (see ChatEndpoint)
            body |= {"tools": prompt.tools, "tool_choice": "none"}
    else:
        body["prompt"] = prompt.text if isinstance(prompt, TextPrompt) else job.prompt_ids
    body |= sampling_fields(job.options, chat)
    if priority:
        body["priority"] = job.priority
    return body


def _openai_message(message: dict[str, Any]) -> dict[str, Any]:
    """A template-shaped message (arguments as objects) as OpenAI's wire has it."""
    calls = message.get("tool_calls")
    if not calls:
        return message
    wire_calls = [
        call | {"function": call["function"] | {"arguments": _arguments(call["function"])}}
        for call in calls
    ]
    return message | {"tool_calls": wire_calls}


def _arguments(function: dict[str, Any]) -> str:
    arguments = function["arguments"]
    return arguments if isinstance(arguments, str) else orjson.dumps(arguments).decode()


def sampling_fields(options: SamplingOptions, chat: bool) -> dict[str, Any]:
    """OpenAI's sampling fields, plus vLLM's where they differ from their defaults (other
    servers ignore unknown fields)."""
    fields: dict[str, Any] = {
        "max_tokens": options.max_tokens,
        "temperature": options.temperature,
        "top_p": options.top_p,
        "n": options.n,
    }
    optional = {
        "seed": options.seed,
        "stop": options.stop or None,
        "presence_penalty": options.presence_penalty or None,
        "frequency_penalty": options.frequency_penalty or None,
        "top_k": options.top_k or None,
        "min_p": options.min_p or None,
        "repetition_penalty": (
            options.repetition_penalty if options.repetition_penalty != 1 else None
        ),
        "min_tokens": options.min_tokens or None,
        "ignore_eos": options.ignore_eos or None,
        "logit_bias": {str(k): v for k, v in (options.logit_bias or {}).items()} or None,
        "skip_special_tokens": None if options.skip_special_tokens else False,
    }
    fields |= {name: value for name, value in optional.items() if value is not None}
    if options.logprobs is not None:
        fields |= (
            {"logprobs": True, "top_logprobs": options.logprobs}
            if chat
            else {"logprobs": options.logprobs}
        )
    if options.json_schema is not None:
        fields["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "response", "schema": options.json_schema},
        }
    elif options.json_object:
        fields["response_format"] = {"type": "json_object"}
    return fields


def completion_step(chunk: dict[str, Any]) -> EngineStep:
    """One ``/v1/completions`` stream chunk as a step (a usage-only chunk has no choices)."""
    choices = [_completion_delta(choice) for choice in chunk.get("choices") or ()]
    return EngineStep(choices, finished=any(c.finish_reason for c in choices))


def _completion_delta(choice: dict[str, Any]) -> ChoiceDelta:
    text = choice.get("text") or ""
    token_ids = choice.get("token_ids")
    logprobs = _completion_logprobs(choice.get("logprobs"))
    return ChoiceDelta(
        index=int(choice.get("index", 0)),
        text=text,
        num_tokens=_count(token_ids, logprobs, text),
        finish_reason=_finish(choice.get("finish_reason")),
        logprobs=logprobs,
        token_ids=token_ids,
    )


def chat_step(chunk: dict[str, Any]) -> EngineStep:
    """One ``/v1/chat/completions`` stream chunk as a step."""
    choices = []
    for choice in chunk.get("choices") or ():
        text = (choice.get("delta") or {}).get("content") or ""
        logprobs = _chat_logprobs(choice.get("logprobs"))
        choices.append(
            ChoiceDelta(
                index=int(choice.get("index", 0)),
                text=text,
                num_tokens=_count(choice.get("token_ids"), logprobs, text),
                finish_reason=_finish(choice.get("finish_reason")),
                logprobs=logprobs,
                token_ids=choice.get("token_ids"),
            )
        )
    return EngineStep(choices, finished=any(c.finish_reason for c in choices))


def _count(token_ids: Any, logprobs: list[TokenLogprob] | None, text: str) -> int:
    """Exact with token ids or logprobs; else one per chunk that carries text (servers
    stream one token a chunk), corrected from ``usage`` at the end."""
    if token_ids is not None:
        return len(token_ids)
    if logprobs is not None:
        return len(logprobs)
    return 1 if text else 0


def _finish(reason: Any) -> Any:
    if reason is None:
        return None
    return reason if reason in FINISH_REASONS else "stop"


def _completion_logprobs(raw: Any) -> list[TokenLogprob] | None:
    if not raw:
        return None
    tokens, values = raw.get("tokens") or [], raw.get("token_logprobs") or []
    tops = raw.get("top_logprobs") or [None] * len(tokens)
    return [
        TokenLogprob(token, float(value or 0.0), list((top or {}).items()))
        for token, value, top in zip(tokens, values, tops, strict=False)
    ]


def _chat_logprobs(raw: Any) -> list[TokenLogprob] | None:
    if not raw or raw.get("content") is None:
        return None
    return [
        TokenLogprob(
            item["token"],
            float(item["logprob"]),
            [(top["token"], float(top["logprob"])) for top in item.get("top_logprobs") or ()],
        )
        for item in raw["content"]
    ]


def embedding_body(jobs: list[EmbeddingJob], model: str, send: str) -> dict[str, Any]:
    """All inputs in one ``/embeddings`` request: token ids, or texts for ``send: request``
    when every input is text (OpenAI's ``input`` is all strings or all token lists)."""
    texts = [job.prompt.text for job in jobs if isinstance(job.prompt, TextPrompt)]
    as_text = send == "request" and len(texts) == len(jobs)
    body: dict[str, Any] = {
        "model": model,
        "input": texts if as_text else [job.prompt_ids for job in jobs],
        "encoding_format": "float",
    }
    if jobs[0].dimensions is not None:
        body["dimensions"] = jobs[0].dimensions
    return body


def embedding_vectors(answer: dict[str, Any], count: int) -> list[list[float]]:
    """An upstream's vectors in input order (``encoding_format: float``); exactly ``count``."""
    data = sorted(answer["data"], key=lambda item: int(item["index"]))
    if [int(item["index"]) for item in data] != list(range(count)):
        raise ValueError(f"expected {count} embeddings indexed 0..{count - 1}")
    return [[float(x) for x in item["embedding"]] for item in data]


def usage_tokens(chunk: dict[str, Any]) -> int | None:
    usage = chunk.get("usage")
    return int(usage["completion_tokens"]) if usage and "completion_tokens" in usage else None
