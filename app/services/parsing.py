"""A request body, parsed and validated by the pipeline itself (not by FastAPI), so that it
happens after the key is checked and charged, and off the event loop when it is large."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from app.errors import InvalidRequestError

M = TypeVar("M", bound=BaseModel)


def parse_json_object(raw: bytes, content_type: str | None) -> dict[str, Any]:
    """The body as a JSON object, or 400.

    The standard library's parser, as FastAPI's: orjson would turn an integer past 64 bits
    into a float and refuse an escaped lone surrogate outright, where the request models
    give both a 400 naming the field.
    """
    if not _is_json(content_type):
        raise InvalidRequestError("The request body must be JSON (Content-Type: application/json).")
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        raise InvalidRequestError("The request body is not valid JSON.") from None
    if not isinstance(data, dict):
        raise InvalidRequestError("The request body must be a JSON object.")
    return data


def _is_json(content_type: str | None) -> bool:
    media = (content_type or "").split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


def validate(model: type[M], data: Mapping[str, Any]) -> M:
    """``model`` built from ``data``, or a 400 naming the first offending field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc.errors()) from None


def validation_error(errors: Sequence[Any], skip: tuple[str, ...] = ()) -> InvalidRequestError:
    """One 400 for pydantic's errors, naming the first offending parameter (its path
    without the ``skip`` prefixes FastAPI adds, such as ``body``)."""
    first = dict(errors[0]) if errors else {}
    loc = [str(part) for part in first.get("loc", ()) if part not in skip]
    param = ".".join(loc) or None
    message = str(first.get("msg", "Invalid request."))
    if first.get("type") == "json_invalid":
        return InvalidRequestError("The request body is not valid JSON.")
    if param:
        message = f"Invalid value for '{param}': {message}"
    return InvalidRequestError(message, param=param)
