"""vLLM's tool-call parsers (``TOOL_CALL_PARSER``: hermes, llama3_json, mistral...) behind
the engine-neutral :class:`~app.engine.tool_protocol.ToolCallParser`.

Uses vLLM's stable ``ToolParser`` interface (``extract_tool_calls``,
``extract_tool_calls_streaming``, ``adjust_request``), with a vLLM chat request that holds
only what parsers read: the declared tools and ``tool_choice: auto``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
from vllm.tool_parsers import ToolParser, ToolParserManager

from app.engine.tool_protocol import ParsedCall, ParsedCallDelta, ParsedDelta, ParsedOutput

log = logging.getLogger(__name__)


def tool_parser_class(name: str) -> type[ToolParser]:
    """vLLM's parser class called ``name``; ``ValueError`` naming the known ones if none."""
    try:
        return ToolParserManager.get_tool_parser(name)
    except KeyError:
        known = ", ".join(ToolParserManager.list_registered())
        raise ValueError(f"TOOL_CALL_PARSER={name!r} is not a vLLM tool parser ({known})") from None


def build_tool_parser(name: str, tokenizer: Any, tools: list[dict[str, Any]]) -> VllmToolParser:
    """A parser for one choice; ``ValueError`` when the model's tokenizer lacks its tokens."""
    parser_class = tool_parser_class(name)
    request = ChatCompletionRequest.model_validate(
        {"model": "gateway", "messages": [], "tools": tools or None}  # tool_choice: auto
    )
    try:
        parser = parser_class(tokenizer, list(request.tools or ()))
    except Exception as exc:  # parsers raise RuntimeError/ValueError for a foreign tokenizer
        raise ValueError(f"TOOL_CALL_PARSER={name!r} does not fit this model: {exc}") from exc
    adjusted = parser.adjust_request(request)
    assert isinstance(adjusted, ChatCompletionRequest)
    return VllmToolParser(parser, adjusted)


class VllmToolParser:
    """One choice's vLLM parser, with the text and token ids it has been fed so far."""

    def __init__(self, parser: ToolParser, request: ChatCompletionRequest) -> None:
        self._parser, self._request = parser, request
        self._text = ""
        self._ids: list[int] = []

    @property
    def skip_special_tokens(self) -> bool:
        return bool(self._request.skip_special_tokens)

    def parse(self, text: str) -> ParsedOutput:
        try:
            info = self._parser.extract_tool_calls(text, self._request)
        except Exception:  # as for a delta: a parser bug leaves the answer as content
            log.warning("tool parser failed on an answer", exc_info=True)
            return ParsedOutput(text)
        if not info.tools_called:
            return ParsedOutput(text if info.content is None else info.content)
        calls = [ParsedCall(c.function.name, c.function.arguments) for c in info.tool_calls]
        return ParsedOutput(info.content or None, calls)

    def feed(self, text: str, token_ids: Sequence[int]) -> ParsedDelta:
        previous_text, previous_ids = self._text, self._ids
        self._text, self._ids = previous_text + text, [*previous_ids, *token_ids]
        try:
            delta = self._parser.extract_tool_calls_streaming(
                previous_text, self._text, text, previous_ids, self._ids, token_ids, self._request
            )
        except Exception:  # a parser bug must not end the stream: the text stays content
            log.warning("tool parser failed on a delta", exc_info=True)
            return ParsedDelta(content=text)
        if delta is None:
            return ParsedDelta()
        return ParsedDelta(delta.content or "", [_call_delta(call) for call in delta.tool_calls])

    def flush(self) -> str:
        return self._parser.get_remaining_unstreamed_args()


def _call_delta(call: Any) -> ParsedCallDelta:
    function = call.function
    if function is None:
        return ParsedCallDelta(call.index)
    return ParsedCallDelta(call.index, function.name, function.arguments or "")
