"""Function tools in a chat request (OpenAI's ``tools``, ``tool_choice``, assistant
``tool_calls``), and the JSON schema that makes the engine call them.

``tool_choice: required`` and a named function are enforced with structured outputs: the
engine may only write what :func:`forced_call_schema` admits — a named function's
``parameters`` schema (the arguments themselves), or for ``required`` a list of
``{"name", "arguments"}`` objects, one ``anyOf`` branch per declared function.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field

from app.errors import InvalidRequestError
from app.schemas.base import GatewayModel

# OpenAI's own limit ("A max of 128 functions are supported"), and its name pattern.
MAX_TOOLS = 128
TOOL_NAME_PATTERN = r"^[a-zA-Z0-9_-]{1,64}$"
# A schema becomes a grammar in the engine: bounded in size and nesting, like any input.
MAX_TOOL_SCHEMA_BYTES = 32 * 1024
MAX_TOOL_SCHEMA_DEPTH = 24
# With parallel calls allowed the list is cut here: a weak model may repeat calls until
# max_tokens, and then the last one is cut short (the embedded model does).
MAX_PARALLEL_TOOL_CALLS = 8
# No parameters: the arguments are exactly {} (a free object lets a weak model ramble).
NO_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}, "additionalProperties": False}


class FunctionDefinition(GatewayModel):
    name: str = Field(pattern=TOOL_NAME_PATTERN)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    @property
    def arguments_schema(self) -> dict[str, Any]:
        return self.parameters or NO_PARAMETERS


class ChatTool(GatewayModel):
    type: Literal["function"]
    function: FunctionDefinition

    def for_template(self) -> dict[str, Any]:
        """As chat templates expect it (vLLM's shape): unset fields left out."""
        function = self.function.model_dump(exclude_none=True, exclude={"strict"})
        return {"type": "function", "function": function}


class FunctionName(GatewayModel):
    name: str


class NamedToolChoice(GatewayModel):
    type: Literal["function"]
    function: FunctionName


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class CalledFunction(GatewayModel):
    name: str
    arguments: str


class MessageToolCall(GatewayModel):
    """A call in an assistant message of the history."""

    id: str
    type: Literal["function"]
    function: CalledFunction

    def for_template(self) -> dict[str, Any]:
        """Arguments as an object when they are one (what templates expect, as in vLLM);
        other text is passed on as it is, for the template to render."""
        try:
            arguments: Any = json.loads(self.function.arguments)
        except ValueError:
            arguments = self.function.arguments
        if not isinstance(arguments, dict):
            arguments = self.function.arguments
        function = {"name": self.function.name, "arguments": arguments}
        return {"id": self.id, "type": "function", "function": function}


def forced_call_schema(
    tools: list[ChatTool], choice: ToolChoice, parallel: bool
) -> dict[str, Any] | None:
    """The schema the engine must write for ``choice``, or None when it is free to answer.

    ``choice`` names a declared function (checked by the request model) or is a mode.
    """
    if isinstance(choice, NamedToolChoice):
        (tool,) = [t for t in tools if t.function.name == choice.function.name]
        return tool.function.arguments_schema
    if choice != "required":
        return None
    defs: dict[str, Any] = {}
    branches = [_call_branch(tool.function, defs) for tool in tools]
    schema: dict[str, Any] = {
        "type": "array",
        "items": {"anyOf": branches},
        "minItems": 1,
        "maxItems": MAX_PARALLEL_TOOL_CALLS if parallel else 1,
    }
    return {**schema, "$defs": defs} if defs else schema


def _call_branch(function: FunctionDefinition, defs: dict[str, Any]) -> dict[str, Any]:
    """``{"name": <this function>, "arguments": <its parameters>}``, name first, so that
    a stream can name the call before its arguments; ``$defs`` move to the root, where
    ``#/$defs/...`` references point."""
    arguments = dict(function.arguments_schema)
    for key, value in arguments.pop("$defs", {}).items():
        if defs.setdefault(key, value) != value:
            raise ValueError(f"tools declare two different $defs named {key!r}")
    return {
        "type": "object",
        "properties": {"name": {"type": "string", "enum": [function.name]}, "arguments": arguments},
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }


def check_tool_bounds(data: Mapping[str, Any]) -> None:
    """Before validation: at most MAX_TOOLS tools, each ``parameters`` schema at most
    MAX_TOOL_SCHEMA_DEPTH deep and MAX_TOOL_SCHEMA_BYTES as JSON (400 naming it)."""
    tools = data.get("tools")
    if not isinstance(tools, list):
        return
    if len(tools) > MAX_TOOLS:
        raise InvalidRequestError(
            f"At most {MAX_TOOLS} tools per request; got {len(tools)}.", param="tools"
        )
    for index, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        schema = function.get("parameters") if isinstance(function, dict) else None
        _check_schema(schema, f"tools.{index}.function.parameters")


def _check_schema(schema: Any, param: str) -> None:
    if _depth_above(schema, MAX_TOOL_SCHEMA_DEPTH):
        raise InvalidRequestError(
            f"{param} nests deeper than {MAX_TOOL_SCHEMA_DEPTH} levels.", param=param
        )
    size = len(json.dumps(schema, ensure_ascii=False).encode(errors="surrogatepass"))
    if size > MAX_TOOL_SCHEMA_BYTES:
        raise InvalidRequestError(
            f"{param} is {size} bytes as JSON; at most {MAX_TOOL_SCHEMA_BYTES} are allowed.",
            param=param,
        )


def _depth_above(node: Any, limit: int) -> bool:
    """Whether objects and arrays nest more than ``limit`` deep (walked without recursion)."""
    pending = [(node, 0)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict | list):
            if depth >= limit:
                return True
            children = item.values() if isinstance(item, dict) else item
            pending.extend((child, depth + 1) for child in children)
    return False
