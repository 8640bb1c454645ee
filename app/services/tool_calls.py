"""Function calls in a chat answer: complete ones (a message's ``tool_calls``), stream
deltas (a chunk's ``delta.tool_calls``), and the reader of the list the engine writes under
``tool_choice: required``.

Ids are ``call_`` and 24 random hex digits, as OpenAI's look; a call's id, type and name go
in its first delta only, its arguments in as many fragments as it takes.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


@dataclass(frozen=True, slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str

    def as_message_entry(self) -> dict[str, Any]:
        function = {"name": self.name, "arguments": self.arguments}
        return {"id": self.id, "type": "function", "function": function}


@dataclass(slots=True)
class CallDelta:
    """New output of call ``index``; ``id`` and ``name`` only in the call's first delta."""

    index: int
    arguments: str = ""
    id: str | None = None
    name: str | None = None

    def as_chunk_entry(self) -> dict[str, Any]:
        if self.id is None:
            return {"index": self.index, "function": {"arguments": self.arguments}}
        function = {"name": self.name, "arguments": self.arguments}
        return {"index": self.index, "id": self.id, "type": "function", "function": function}


def merge_deltas(deltas: list[CallDelta]) -> list[CallDelta]:
    """One entry per call and step: a fragment joins the entry of its call before it."""
    merged: list[CallDelta] = []
    for delta in deltas:
        if merged and merged[-1].index == delta.index and delta.id is None:
            merged[-1].arguments += delta.arguments
        else:
            merged.append(delta)
    return merged


@dataclass(slots=True)
class _ListedCall:
    name: str | None = None
    arguments: str = ""


@dataclass(slots=True)
class _Arguments:
    """The ``arguments`` value being read: its nesting, and whether inside a string."""

    started: bool = False
    depth: int = 0
    in_string: bool = False
    escaped: bool = False

    def ends_before(self, char: str) -> bool:
        return self.started and self.depth == 0 and not self.in_string and char in ",}"

    def take(self, char: str) -> bool:
        """Whether ``char`` belongs to the value (leading whitespace does not)."""
        if not self.started and char.isspace():
            return False
        self.started = True
        if self.in_string:
            escaped, self.escaped = self.escaped, not self.escaped and char == "\\"
            self.in_string = escaped or char != '"'
        elif char == '"':
            self.in_string = True
        elif char in "{[":
            self.depth += 1
        elif char in "}]":
            self.depth -= 1
        return True


@dataclass(slots=True)
class CallListScanner:
    """Reads ``[{"name": "f", "arguments": {...}}, ...]`` as it is written.

    :meth:`feed` returns what became known: a call's name (its first delta, with the
    arguments read so far) and argument fragments, as the text they were written in, so
    the fragments of a stream join into exactly the arguments of the whole answer. Keys
    may come in either order; anything but ``name`` and ``arguments`` is skipped.
    """

    calls: list[_ListedCall] = field(default_factory=list)
    _depth: int = 0
    _string: list[str] | None = None  # a key or name being read
    _escaped: bool = False
    _key: str | None = None
    _reading_key: bool = False
    _arguments: _Arguments | None = None

    def feed(self, text: str) -> list[tuple[int, str | None, str]]:
        """``(call index, name if it just became known, argument text)`` per change."""
        out: list[tuple[int, str | None, str]] = []
        for char in text:
            self._read(char, out)
        return out

    def _read(self, char: str, out: list[tuple[int, str | None, str]]) -> None:
        arguments = self._arguments
        if arguments is not None and not arguments.ends_before(char):
            if arguments.take(char):
                self._argument_char(char, out)
            return
        self._arguments = None
        if self._string is not None:
            self._string_char(char, out)
        elif self._depth == 1 and char == "{":
            self._depth, self._reading_key = 2, True
            self.calls.append(_ListedCall())
        elif self._depth == 2:
            self._object_char(char)
        elif char == "[" and self._depth == 0:
            self._depth = 1

    def _object_char(self, char: str) -> None:
        if char == '"':
            self._string = []
        elif char == ":":
            self._reading_key = False
            if self._key == "arguments":
                self._arguments = _Arguments()
        elif char == ",":
            self._reading_key = True
        elif char == "}":
            self._depth, self._key = 1, None

    def _string_char(self, char: str, out: list[tuple[int, str | None, str]]) -> None:
        assert self._string is not None
        if self._escaped or char == "\\":
            self._escaped = not self._escaped
        elif char == '"':
            value = json.loads('"' + "".join(self._string) + '"')
            self._string = None
            self._string_done(value, out)
            return
        self._string.append(char)

    def _string_done(self, value: str, out: list[tuple[int, str | None, str]]) -> None:
        call = self.calls[-1]
        if self._reading_key:
            self._key = value
        elif self._key == "name" and call.name is None:
            call.name = value
            out.append((len(self.calls) - 1, value, call.arguments))

    def _argument_char(self, char: str, out: list[tuple[int, str | None, str]]) -> None:
        call = self.calls[-1]
        call.arguments += char
        if call.name is not None:
            out.append((len(self.calls) - 1, None, char))
