"""How one choice's generated text becomes content and function calls, by ``tool_choice``.

- a named function: the text *is* the arguments (the engine wrote its parameters schema);
- ``required``: the text is the list of calls of :func:`~app.schemas.tools.forced_call_schema`;
- ``auto`` with ``TOOL_CALL_PARSER``: the model's own syntax, read by its vLLM parser.

Without a reader (``none``, or ``auto`` without a parser) the text is plain content. A
reader serves one choice, streamed (:meth:`~CallReader.read` per delta, then
:meth:`~CallReader.finish`) or whole (:meth:`~CallReader.whole`). ``finish_reason`` is
OpenAI's: ``tool_calls`` when ``auto`` or ``required`` ended in calls, ``stop`` for a named
function; ``length`` whenever ``max_tokens`` cut the answer short.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from app.engine.tool_protocol import ParsedCallDelta, ToolCallParser
from app.services.tool_calls import CallDelta, CallListScanner, ToolCall, merge_deltas, new_call_id


class CallReader(Protocol):
    content_expected: bool  # False: the answer is calls only, so content starts as null

    def opening(self) -> list[CallDelta]: ...

    def read(self, text: str, token_ids: Sequence[int]) -> tuple[str, list[CallDelta]]: ...

    def finish(self, calls: list[CallDelta]) -> list[CallDelta]:
        """The calls of the last delta, completed."""
        ...

    def finish_reason(self, engine_reason: str) -> str: ...

    def whole(self, text: str) -> tuple[str | None, list[ToolCall]]: ...


class _Reader:
    """Call ids by index, and the finish reason rule."""

    content_expected = False
    reports_calls = True  # finish_reason "tool_calls" once a call was made

    def __init__(self) -> None:
        self.ids: dict[int, str] = {}

    def _named(self, index: int, name: str, arguments: str = "") -> CallDelta:
        """The first delta of call ``index``, which gets its id now."""
        self.ids[index] = call_id = new_call_id()
        return CallDelta(index, arguments, call_id, name)

    def opening(self) -> list[CallDelta]:
        return []

    def finish(self, calls: list[CallDelta]) -> list[CallDelta]:
        return calls

    def finish_reason(self, engine_reason: str) -> str:
        called = self.reports_calls and bool(self.ids)
        return "tool_calls" if called and engine_reason == "stop" else engine_reason


class NamedCallReader(_Reader):
    """``tool_choice: {"type": "function", "function": {"name": ...}}``: one call."""

    reports_calls = False

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def opening(self) -> list[CallDelta]:
        return [self._named(0, self.name)]

    def read(self, text: str, token_ids: Sequence[int]) -> tuple[str, list[CallDelta]]:
        return "", [CallDelta(0, text)] if text else []

    def whole(self, text: str) -> tuple[str | None, list[ToolCall]]:
        self.ids[0] = call_id = new_call_id()
        return None, [ToolCall(call_id, self.name, text)]


class RequiredCallReader(_Reader):
    """``tool_choice: required``: the list the engine writes, read as it comes."""

    def __init__(self) -> None:
        super().__init__()
        self.scanner = CallListScanner()

    def read(self, text: str, token_ids: Sequence[int]) -> tuple[str, list[CallDelta]]:
        deltas = [
            self._named(index, name, arguments) if name is not None else CallDelta(index, arguments)
            for index, name, arguments in self.scanner.feed(text)
        ]
        return "", merge_deltas(deltas)

    def whole(self, text: str) -> tuple[str | None, list[ToolCall]]:
        self.scanner.feed(text)
        named = [call for call in self.scanner.calls if call.name is not None]
        calls = [ToolCall(new_call_id(), call.name or "", call.arguments) for call in named]
        self.ids = dict(enumerate(call.id for call in calls))
        return None, calls


class ParsedCallReader(_Reader):
    """``tool_choice: auto`` with the model's parser; ``parallel_tool_calls: false`` keeps
    the first call only."""

    content_expected = True

    def __init__(self, parser: ToolCallParser, parallel: bool) -> None:
        super().__init__()
        self.parser, self.parallel = parser, parallel
        self.pending: dict[int, str] = {}  # arguments of a call not yet named

    def read(self, text: str, token_ids: Sequence[int]) -> tuple[str, list[CallDelta]]:
        parsed = self.parser.feed(text, token_ids)
        return parsed.content, self._deltas(parsed.calls)

    def finish(self, calls: list[CallDelta]) -> list[CallDelta]:
        """As vLLM's serving: what the parser holds back goes into a last delta that
        carries calls (a parser that streamed everything holds nothing back)."""
        if calls:
            calls[-1].arguments += self.parser.flush()
        return calls

    def _deltas(self, parsed: list[ParsedCallDelta]) -> list[CallDelta]:
        deltas = []
        for call in parsed:
            if call.index > 0 and not self.parallel:
                continue
            if call.index in self.ids:
                deltas.append(CallDelta(call.index, call.arguments))
            elif call.name is not None:
                arguments = self.pending.pop(call.index, "") + call.arguments
                deltas.append(self._named(call.index, call.name, arguments))
            else:
                self.pending[call.index] = self.pending.get(call.index, "") + call.arguments
        return merge_deltas(deltas)

    def whole(self, text: str) -> tuple[str | None, list[ToolCall]]:
        parsed = self.parser.parse(text)
        kept = parsed.calls if self.parallel else parsed.calls[:1]
        calls = [ToolCall(new_call_id(), call.name, call.arguments) for call in kept]
        self.ids = dict(enumerate(call.id for call in calls))
        return parsed.content, calls
