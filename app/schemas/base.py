"""The base of every request model: unknown fields ignored (as OpenAI does), and no string
anywhere in a field, however deeply nested, that is not valid Unicode."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator


class GatewayModel(BaseModel):
    model_config = ConfigDict(extra="ignore")

    @field_validator("*", mode="before")
    @classmethod
    def _valid_unicode(cls, value: Any) -> Any:
        """JSON can escape lone surrogates (``"\\ud800"``); no tokenizer, engine or error
        message accepts them, so refuse them in every string field, list and object."""
        if not is_valid_unicode(value):
            raise ValueError("must be valid Unicode text (no lone surrogates)")
        return value


def is_valid_unicode(value: Any) -> bool:
    """Every string in ``value`` (lists and dicts walked without recursion: a schema may
    nest as deep as JSON allows) encodes as UTF-8."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return False
        elif isinstance(item, list):
            pending.extend(item)
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
    return True
