"""OpenAI response bodies and stream chunks, built as plain dicts (``app.api.sse`` frames them).

Streaming formatters run once per token, so they build the smallest dict the spec allows
and never round-trip through pydantic.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from app.engine.protocol import ChoiceDelta, TokenLogprob


@dataclass(slots=True)
class ChoiceResult:
    """One finished choice, accumulated from engine steps."""

    index: int
    text: str = ""
    num_tokens: int = 0
    finish_reason: str | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)

    def add(self, delta: ChoiceDelta) -> None:
        self.text += delta.text
        self.num_tokens += delta.num_tokens
        self.finish_reason = delta.finish_reason or self.finish_reason
        if delta.logprobs:
            self.logprobs.extend(delta.logprobs)
        if delta.token_ids:
            self.token_ids.extend(delta.token_ids)


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


@dataclass(frozen=True, slots=True)
class ResponseHead:
    """The fields every body and chunk of one response shares."""

    id: str
    created: int
    model: str

    def envelope(self, obj: str) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}


# -- chat ------------------------------------------------------------------------------------


def chat_logprobs(items: Sequence[TokenLogprob] | None) -> dict[str, Any] | None:
    if items is None:
        return None
    return {"content": [_chat_token(item) for item in items], "refusal": None}


def _chat_token(item: TokenLogprob) -> dict[str, Any]:
    top = [{"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in item.top]
    return {
        "token": item.token,
        "logprob": item.logprob,
        "bytes": list(item.token.encode()),
        "top_logprobs": top,
    }


def chat_completion(
    head: ResponseHead, choices: list[ChoiceResult], prompt_tokens: int, with_logprobs: bool
) -> dict[str, Any]:
    body = head.envelope("chat.completion")
    body["choices"] = [
        {
            "index": c.index,
            "message": {"role": "assistant", "content": c.text, "refusal": None},
            "logprobs": chat_logprobs(c.logprobs) if with_logprobs else None,
            "finish_reason": c.finish_reason or "stop",
        }
        for c in choices
    ]
    body["usage"] = usage(prompt_tokens, sum(c.num_tokens for c in choices))
    return body


def chat_role_chunk(
    head: ResponseHead,
    index: int,
    content: str | None = "",
    tool_calls: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The first chunk of choice ``index``; content null when only calls will follow."""
    delta: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls:
        delta["tool_calls"] = tool_calls
    return chat_delta_chunk(head, index, delta, None, None)


def chat_delta_chunk(
    head: ResponseHead,
    index: int,
    delta: dict[str, Any],
    finish_reason: str | None,
    logprobs: dict[str, Any] | None,
) -> dict[str, Any]:
    body = head.envelope("chat.completion.chunk")
    body["choices"] = [
        {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}
    ]
    return body


def chat_message(content: str | None, tool_calls: list[dict[str, Any]]) -> dict[str, Any]:
    """An answer's message; ``tool_calls`` only when there are some (the spec's array is
    not nullable)."""
    message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return message


def chat_chunk(head: ResponseHead, delta: ChoiceDelta, with_logprobs: bool) -> dict[str, Any]:
    body = head.envelope("chat.completion.chunk")
    body["choices"] = [
        {
            "index": delta.index,
            "delta": {"content": delta.text} if delta.text else {},
            "logprobs": chat_logprobs(delta.logprobs) if with_logprobs else None,
            "finish_reason": delta.finish_reason,
        }
    ]
    return body


def usage_chunk(head: ResponseHead, obj: str, prompt_tokens: int, completion_tokens: int) -> dict:
    body = head.envelope(obj)
    body["choices"] = []
    body["usage"] = usage(prompt_tokens, completion_tokens)
    return body


# -- completions -----------------------------------------------------------------------------


def completion_logprobs(items: Sequence[TokenLogprob] | None, offset: int) -> dict | None:
    if items is None:
        return None
    offsets, position = [], offset
    for item in items:
        offsets.append(position)
        position += len(item.token)
    return {
        "tokens": [item.token for item in items],
        "token_logprobs": [item.logprob for item in items],
        "top_logprobs": [dict(item.top) for item in items],
        "text_offset": offsets,
    }


def completion(
    head: ResponseHead,
    choices: list[ChoiceResult],
    prompt_tokens: int,
    with_logprobs: bool,
    prefixes: Sequence[str],
    with_token_ids: bool = False,
) -> dict[str, Any]:
    body = head.envelope("text_completion")
    body["choices"] = [
        {
            "index": c.index,
            "text": prefixes[i] + c.text,
            "logprobs": (
                completion_logprobs(c.logprobs, len(prefixes[i])) if with_logprobs else None
            ),
            "finish_reason": c.finish_reason or "stop",
        }
        for i, c in enumerate(choices)
    ]
    if with_token_ids:  # vLLM's extension, asked for with return_token_ids
        for choice, result in zip(body["choices"], choices, strict=True):
            choice["token_ids"] = result.token_ids
    body["usage"] = usage(prompt_tokens, sum(c.num_tokens for c in choices))
    return body


def completion_chunk(
    head: ResponseHead, index: int, text: str, finish: str | None, logprobs: dict | None
) -> dict[str, Any]:
    body = head.envelope("text_completion")
    body["choices"] = [
        {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}
    ]
    return body
