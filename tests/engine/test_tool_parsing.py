"""vLLM's tool parsers behind the gateway's ToolCallParser, with a parser registered the
way out-of-tree plugins are (ToolParserManager), which fails on everything it reads."""

from __future__ import annotations

from typing import Any

import pytest
from vllm.tool_parsers import ToolParser, ToolParserManager

from app.engine.tool_parsing import build_tool_parser
from app.engine.tool_protocol import ParsedDelta, ParsedOutput

BROKEN = "broken-for-tests"


class BrokenToolParser(ToolParser):
    """A plugin with a bug: it raises on any text."""

    def extract_tool_calls(self, model_output: str, request: Any) -> Any:
        raise RuntimeError("plugin bug")

    def extract_tool_calls_streaming(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("plugin bug")


@pytest.fixture(scope="module", autouse=True)
def _registered() -> None:
    ToolParserManager.register_module(name=BROKEN, module=BrokenToolParser)


def test_a_failing_parser_leaves_the_text_as_content() -> None:
    """A parser that raises costs the caller no error: whole answers and stream deltas
    come back as plain content."""
    parser = build_tool_parser(BROKEN, tokenizer=None, tools=[])
    assert parser.parse("Hello") == ParsedOutput("Hello")
    assert parser.feed("Hel", [1, 2]) == ParsedDelta(content="Hel")
    assert parser.flush() == ""


def test_an_unknown_parser_name_lists_the_known_ones() -> None:
    """A typo in TOOL_CALL_PARSER says which names exist."""
    with pytest.raises(ValueError, match=r"'hermess' is not a vLLM tool parser \(.*hermes"):
        build_tool_parser("hermess", tokenizer=None, tools=[])
