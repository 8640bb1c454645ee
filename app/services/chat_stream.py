"""Chat streams: plain text (:class:`ChatStream`, the per-token path kept lean) and answers
whose choices may call functions (:class:`ToolChatStream`, each choice read by its
:class:`~app.services.call_readers.CallReader`)."""

from __future__ import annotations

from typing import Any

from app.engine.protocol import ChoiceDelta, EngineStep
from app.schemas.openai import ChatCompletionRequest
from app.services import formatting as fmt
from app.services.call_readers import CallReader
from app.services.endpoint import Chunk

CHUNK = "chat.completion.chunk"


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


class ToolChatStream(ChatStream):
    """A chat stream whose choices may call functions: a call's first delta names it
    (``index``, ``id``, ``type``, function name), then argument fragments follow."""

    __slots__ = ("readers",)

    def __init__(
        self, head: fmt.ResponseHead, req: ChatCompletionRequest, readers: list[CallReader]
    ) -> None:
        super().__init__(head, req)
        self.readers = readers

    def opening(self) -> list[Chunk]:
        return [
            fmt.chat_role_chunk(
                self.head,
                index,
                "" if reader.content_expected else None,
                [call.as_chunk_entry() for call in reader.opening()],
            )
            for index, reader in enumerate(self.readers)
        ]

    def step(self, index: int, step: EngineStep) -> list[Chunk]:
        return [chunk for delta in step.choices if (chunk := self._chunk(delta)) is not None]

    def _chunk(self, delta: ChoiceDelta) -> Chunk | None:
        reader = self.readers[delta.index]
        content, calls = reader.read(delta.text, delta.token_ids or ())
        finish = None
        if delta.finish_reason is not None:
            calls = reader.finish(calls)
            finish = reader.finish_reason(delta.finish_reason)
        logprobs = fmt.chat_logprobs(delta.logprobs) if self.logprobs else None
        if not (content or calls or finish or logprobs):
            return None
        fields: dict[str, Any] = {"content": content} if content else {}
        if calls:
            fields["tool_calls"] = [call.as_chunk_entry() for call in calls]
        return fmt.chat_delta_chunk(self.head, delta.index, fields, finish, logprobs)
