"""``/v1/chat/completions`` on the pipeline: one prompt (the rendered messages and tools),
``n`` choices, each plain text or read for function calls by a
:class:`~app.services.call_readers.CallReader` (which one is decided by ``tool_choice``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from app.config import ServerSettings
from app.engine.tool_protocol import ToolCallParser
from app.errors import InvalidRequestError
from app.routing.router import ModelRoute
from app.schemas import logit_bias
from app.schemas.openai import ChatCompletionRequest
from app.schemas.tools import NamedToolChoice, check_tool_bounds
from app.services import formatting as fmt
from app.services.call_readers import (
    CallReader,
    NamedCallReader,
    ParsedCallReader,
    RequiredCallReader,
)
from app.services.chat_stream import ChatStream, ToolChatStream
from app.services.endpoint import ChatPrompt, Chunk, Job, JobResult, Prompt
from app.services.formatting import ChoiceResult


def check_n(n: int, server: ServerSettings) -> None:
    if n > server.max_n:
        raise InvalidRequestError(
            f"n={n} is above this server's limit of {server.max_n}.", param="n"
        )


class ChatEndpoint:
    """``/v1/chat/completions``; the model's ``tool_call_parser`` reads ``auto`` calls."""

    request_model = ChatCompletionRequest
    id_prefix = "chatcmpl"
    prompt_param = "messages"

    def precheck(self, data: Mapping[str, Any], server: ServerSettings) -> None:
        """Bounds before validation: 120k messages (or tools, or biases) must not be
        validated, templated or tokenized to be refused."""
        messages = data.get("messages")
        if isinstance(messages, list) and len(messages) > server.max_messages:
            raise InvalidRequestError(
                f"At most {server.max_messages} messages per request; got {len(messages)}.",
                param="messages",
            )
        logit_bias.check_count(data)
        check_tool_bounds(data)

    def streams(self, req: ChatCompletionRequest) -> bool:
        return req.stream

    def prompts(
        self, req: ChatCompletionRequest, server: ServerSettings, route: ModelRoute
    ) -> list[Prompt]:
        check_n(req.n, server)
        logit_bias.check_in_vocabulary(req.token_biases, route.tokenizer.vocab_size)
        if _parses_calls(req, route) and not _parser(req, route).skip_special_tokens:
            req.skip_special_tokens = False  # the parser reads the model's special tokens
        return [ChatPrompt(req.chat_messages(), req.template_tools())]

    def body(
        self,
        head: fmt.ResponseHead,
        req: ChatCompletionRequest,
        results: list[JobResult],
        route: ModelRoute,
    ) -> Chunk:
        (result,) = results
        body = fmt.chat_completion(head, result.choices, result.prompt_tokens, req.logprobs)
        readers = call_readers(req, route)
        return body if readers is None else answer_with_calls(body, result.choices, readers)

    def formatter(
        self,
        head: fmt.ResponseHead,
        req: ChatCompletionRequest,
        jobs: list[Job],
        route: ModelRoute,
    ) -> ChatStream | ToolChatStream:
        readers = call_readers(req, route)
        return ChatStream(head, req) if readers is None else ToolChatStream(head, req, readers)


def call_readers(req: ChatCompletionRequest, route: ModelRoute) -> list[CallReader] | None:
    """One reader per choice, or None when the answer is plain text."""
    choice, n = req.effective_tool_choice, req.n
    if isinstance(choice, NamedToolChoice):
        return [NamedCallReader(choice.function.name) for _ in range(n)]
    if choice == "required":
        return [RequiredCallReader() for _ in range(n)]
    if _parses_calls(req, route):
        parallel = req.allows_parallel_calls
        return [ParsedCallReader(_parser(req, route), parallel) for _ in range(n)]
    return None


def _parses_calls(req: ChatCompletionRequest, route: ModelRoute) -> bool:
    return req.effective_tool_choice == "auto" and route.tool_call_parser is not None


def _parser(req: ChatCompletionRequest, route: ModelRoute) -> ToolCallParser:
    return route.tool_parser(req.template_tools() or [])


def answer_with_calls(
    body: dict[str, Any], choices: list[ChoiceResult], readers: list[CallReader]
) -> dict[str, Any]:
    """``body`` (a chat completion) with each choice's message read for calls."""
    for entry, choice in zip(body["choices"], choices, strict=True):
        reader = readers[choice.index]
        content, calls = reader.whole(choice.text)
        entry["message"] = fmt.chat_message(content, [c.as_message_entry() for c in calls])
        entry["finish_reason"] = reader.finish_reason(choice.finish_reason or "stop")
    return body
