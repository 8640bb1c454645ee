"""The one rendering of a :class:`~app.errors.GatewayError`: a JSON response, or the final
event of a stream that fails after its 200."""

from __future__ import annotations

import orjson
from starlette.responses import Response

from app.errors import GatewayError


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
