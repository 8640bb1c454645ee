"""``/v1/chat/completions`` on the pipeline: one prompt (the rendered messages), ``n`` choices."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from app.config import ServerSettings
from app.engine.protocol import EngineStep
from app.errors import InvalidRequestError
from app.schemas.openai import ChatCompletionRequest
from app.services import formatting as fmt
from app.services.endpoint import ChatPrompt, Chunk, Decode, Job, JobResult, Prompt

CHUNK = "chat.completion.chunk"


def check_n(n: int, server: ServerSettings) -> None:
    if n > server.max_n:
        raise InvalidRequestError(
            f"n={n} is above this server's limit of {server.max_n}.", param="n"
        )


class ChatEndpoint:
    request_model = ChatCompletionRequest
    id_prefix = "chatcmpl"
    prompt_param = "messages"

    def precheck(self, data: Mapping[str, Any], server: ServerSettings) -> None:
        """MAX_MESSAGES before validation: 120k messages must not be validated, templated
        or tokenized to be refused."""
        messages = data.get("messages")
        if isinstance(messages, list) and len(messages) > server.max_messages:
            raise InvalidRequestError(
                f"At most {server.max_messages} messages per request; got {len(messages)}.",
                param="messages",
            )

    def streams(self, req: ChatCompletionRequest) -> bool:
        return req.stream

    def prompts(self, req: ChatCompletionRequest, server: ServerSettings) -> list[Prompt]:
        check_n(req.n, server)
        return [ChatPrompt(req.chat_messages())]

    def body(
        self,
        head: fmt.ResponseHead,
        req: ChatCompletionRequest,
        results: list[JobResult],
        decode: Decode,
    ) -> Chunk:
        (result,) = results
        return fmt.chat_completion(head, result.choices, result.prompt_tokens, req.logprobs)

    def formatter(
        self, head: fmt.ResponseHead, req: ChatCompletionRequest, jobs: list[Job], decode: Decode
    ) -> ChatStream:
        return ChatStream(head, req)


class ChatStream:
    """Role chunks first, then a chunk per choice that advanced, usage last if asked."""

    __slots__ = ("head", "include_usage", "logprobs", "n")

    def __init__(self, head: fmt.ResponseHead, req: ChatCompletionRequest) -> None:
        self.head, self.n = head, req.n
        self.logprobs, self.include_usage = req.logprobs, req.include_usage

    def opening(self) -> list[Chunk]:
        return [fmt.chat_role_chunk(self.head, index) for index in range(self.n)]

    def step(self, index: int, step: EngineStep) -> list[Chunk]:
        return [
            fmt.chat_chunk(self.head, delta, self.logprobs)
            for delta in step.choices
            if delta.text or delta.finish_reason or delta.logprobs
        ]

    def closing(self, prompt_tokens: int, completion_tokens: int) -> list[Chunk]:
        # Other chunks omit "usage": OpenAI's schema types it as an object, not nullable.
        if not self.include_usage:
            return []
        return [fmt.usage_chunk(self.head, CHUNK, prompt_tokens, completion_tokens)]
