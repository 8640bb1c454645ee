"""The one rendering of a :class:`~app.errors.GatewayError`: a JSON response, or the final
event of a stream that fails after its 200."""

from __future__ import annotations

import logging

import orjson
from starlette.responses import Response

from app.errors import GatewayError

log = logging.getLogger(__name__)


def as_gateway_error(exc: Exception) -> GatewayError:
    """What a client is told of an exception nothing else answered: a ``GatewayError`` as
    itself; anything else is a bug, logged here and answered as a plain 500."""
    if isinstance(exc, GatewayError):
        return exc
    log.exception("unhandled error", exc_info=exc)
    return GatewayError("The server had an error processing your request.")


def error_response(error: GatewayError) -> Response:
    """The error as an HTTP response in OpenAI's envelope, with its retry headers."""
    return Response(
        error_body(error),
        status_code=error.status,
        headers=error.headers(),
        media_type="application/json",
    )


def error_body(error: GatewayError) -> bytes:
    return orjson.dumps(error.body())


def error_sse_event(error: GatewayError) -> bytes:
    """The final SSE event of a stream that fails after its 200 (``[DONE]`` follows)."""
    return b"data: " + error_body(error) + b"\n\n"
