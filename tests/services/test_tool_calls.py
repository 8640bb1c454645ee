"""The reader of the call list the engine writes under ``tool_choice: required`` (pure
functions: the streamed fragments must join into exactly the whole answer's calls)."""

from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.services.call_readers import NamedCallReader, RequiredCallReader
from app.services.tool_calls import CallDelta, CallListScanner, merge_deltas

LISTED = (
    '[{"name":"get_weather","arguments":{"city":"Paris","note":"a \\"}\\", b,{"}},'
    '{"arguments":{"zone":"cet"},"name":"get_time"},'
    '{"name":"noop","arguments":{}}]'
)
EXPECTED = [
    ("get_weather", '{"city":"Paris","note":"a \\"}\\", b,{"}'),
    ("get_time", '{"zone":"cet"}'),
    ("noop", "{}"),
]


def _stream(pieces: list[str]) -> dict[int, tuple[str | None, str, int]]:
    """Per call index: (name, joined arguments, how many deltas carried an id)."""
    reader, calls = RequiredCallReader(), {}
    for piece in pieces:
        content, deltas = reader.read(piece, ())
        assert content == ""
        for delta in deltas:
            name, arguments, ids = calls.get(delta.index, (None, "", 0))
            if delta.id is not None:
                assert delta.id.startswith("call_") and len(delta.id) == 29
                name, ids = delta.name, ids + 1
            calls[delta.index] = (name, arguments + delta.arguments, ids)
    return calls


def test_whole_list_gives_each_call_its_name_and_exact_argument_text() -> None:
    """Strings holding braces, commas and escaped quotes stay inside the arguments; keys
    may come in either order."""
    content, calls = RequiredCallReader().whole(LISTED)
    assert content is None
    assert [(call.name, call.arguments) for call in calls] == EXPECTED
    assert all(json.loads(call.arguments) is not None for call in calls)
    assert len({call.id for call in calls}) == 3


@given(st.lists(st.integers(min_value=1, max_value=len(LISTED) - 1), max_size=40))
def test_any_split_streams_the_same_calls(cuts: list[int]) -> None:
    """However the text is cut into deltas, each call is named once and its fragments
    join into the whole answer's arguments."""
    bounds = [0, *sorted(set(cuts)), len(LISTED)]
    pieces = [LISTED[a:b] for a, b in itertools.pairwise(bounds)]
    streamed = _stream(pieces)
    assert [(name, arguments) for name, arguments, _ in streamed.values()] == EXPECTED
    assert all(ids == 1 for _, _, ids in streamed.values())


def test_arguments_before_the_name_wait_for_it() -> None:
    """A call's first delta carries its name and the arguments read before it."""
    reader = RequiredCallReader()
    assert reader.read('[{"arguments":{"a":', ()) == ("", [])
    _, deltas = reader.read('1},"name":"f"}]', ())
    assert [(d.index, d.name, d.arguments) for d in deltas] == [(0, "f", '{"a":1}')]


def test_a_list_cut_short_keeps_what_was_written() -> None:
    """max_tokens may cut the list: calls named so far are kept, the last one partial."""
    _, calls = RequiredCallReader().whole('[{"name":"f","arguments":{"a":1}},{"name":"g","argu')
    assert [(call.name, call.arguments) for call in calls] == [("f", '{"a":1}'), ("g", "")]
    assert CallListScanner().feed('[{"name":"f') == []


@pytest.mark.parametrize(
    ("reader", "engine", "expected"),
    [
        (RequiredCallReader(), "stop", "tool_calls"),
        (RequiredCallReader(), "length", "length"),
        (NamedCallReader("f"), "stop", "stop"),
    ],
)
def test_finish_reason_follows_openai(reader: object, engine: str, expected: str) -> None:
    """required ends in tool_calls, a named function in stop, a cut answer in length."""
    reader.whole('[{"name":"f","arguments":{}}]')  # type: ignore[attr-defined]
    assert reader.finish_reason(engine) == expected  # type: ignore[attr-defined]


def test_named_reader_names_the_call_first_then_streams_the_text_as_arguments() -> None:
    """The opening delta holds id and name; every later delta is an argument fragment."""
    reader = NamedCallReader("get_time")
    (opening,) = reader.opening()
    assert (opening.index, opening.name, opening.arguments) == (0, "get_time", "")
    assert reader.read('{"zone":', (1, 2)) == ("", [CallDelta(0, '{"zone":')])
    assert reader.read("", ()) == ("", [])


def test_merge_keeps_one_entry_per_call() -> None:
    """A call's fragments in one step join its entry; a new call starts its own."""
    merged = merge_deltas(
        [CallDelta(0, "{", "call_a", "f"), CallDelta(0, "}"), CallDelta(1, "", "call_b", "g")]
    )
    assert [(d.index, d.arguments, d.id) for d in merged] == [
        (0, "{}", "call_a"),
        (1, "", "call_b"),
    ]
