"""What a model's tool-call parser gives the gateway, in plain Python (no vLLM types).

A parser reads one choice's generated text in the model's own tool-call syntax (Hermes'
``<tool_call>`` tags, a JSON list...) and splits it into content and function calls. It
is stateful for a stream: feed it every delta of one choice, in order, then ``flush()``.
Calls are numbered from 0 in the order they appear; ids are the gateway's to give.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True, slots=True)
class ParsedCall:
    """One complete call: the function's name and its arguments as JSON text."""

    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class ParsedCallDelta:
    """New output of call ``index``: its name the first time, then argument fragments."""

    index: int
    name: str | None = None
    arguments: str = ""


@dataclass(frozen=True, slots=True)
class ParsedOutput:
    """A whole choice: the text that is not a call (None when there is none), the calls."""

    content: str | None
    calls: list[ParsedCall] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ParsedDelta:
    """One delta of a choice: new content and new call output."""

    content: str = ""
    calls: list[ParsedCallDelta] = field(default_factory=list)


class ToolCallParser(Protocol):
    """One choice's parser; see the module docstring."""

    @property
    def skip_special_tokens(self) -> bool:
        """False when the syntax uses special tokens, which must then stay in the text."""
        ...

    def parse(self, text: str) -> ParsedOutput:
        """The whole text at once (non-streamed answers)."""
        ...

    def feed(self, text: str, token_ids: Sequence[int]) -> ParsedDelta:
        """The next delta of a stream."""
        ...

    def flush(self) -> str:
        """At the end of a stream: argument text of the last call that the parser read but
        has not given yet (vLLM's serving adds it to a last delta that carries calls)."""
        ...
