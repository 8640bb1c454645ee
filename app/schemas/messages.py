"""Chat messages of a request, and the shape chat templates expect them in.

Assistant messages may carry ``tool_calls`` (their content then may be null); ``tool``
messages answer a call by its ``tool_call_id``. Whether every call is answered is the
client's business, as with vLLM: the template renders what it is given.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import model_validator

from app.schemas.base import GatewayModel
from app.schemas.tools import MessageToolCall


class TextContentPart(GatewayModel):
    type: Literal["text"]
    text: str


class ChatMessage(GatewayModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextContentPart] | None = None
    name: str | None = None
    tool_calls: list[MessageToolCall] | None = None
    tool_call_id: str | None = None

    @model_validator(mode="after")
    def _tool_fields_fit_the_role(self) -> ChatMessage:
        """Raised as ValueError, so that the 400 names the message (``messages.3``)."""
        if self.tool_calls is not None and self.role != "assistant":
            raise ValueError(f"only assistant messages may have tool_calls, not {self.role}")
        if self.role == "tool" and self.tool_call_id is None:
            raise ValueError("a tool message needs the tool_call_id of the call it answers")
        return self

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)

    def for_template(self) -> dict[str, Any]:
        """``developer`` is OpenAI's new name for ``system``, which templates know; tool
        fields are passed as HF templates read them."""
        role = "system" if self.role == "developer" else self.role
        message: dict[str, Any] = {"role": role, "content": self.text()}
        if self.tool_calls:
            message["tool_calls"] = [call.for_template() for call in self.tool_calls]
        if self.role == "tool":
            message["tool_call_id"] = self.tool_call_id
            if self.name is not None:
                message["name"] = self.name
        return message
