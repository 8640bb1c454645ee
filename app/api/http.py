"""Small HTTP helpers shared by the routers: JSON and SSE responses, disconnect detection."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import Request
from starlette.responses import Response, StreamingResponse

from app.schemas.errors import ERROR_RESPONSES
from app.services.cancellation import DisconnectWaiter
from app.services.generation import Reply

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

# Every generation route declares the error statuses it can answer with.
GENERATION_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: ERROR_RESPONSES[code] for code in (400, 401, 403, 404, 413, 422, 429, 503, 504)
}
_SSE: dict[str, Any] = {"text/event-stream": {}}
# Chat and completions: JSON (FastAPI's default, listed for us), or SSE with `stream: true`.
STREAMING_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "JSON, or with `stream: true` a text/event-stream.", "content": _SSE},
    **GENERATION_RESPONSES,
}
# SSE only: pair with response_class=StreamingResponse so that no JSON 200 is listed.
SSE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "A text/event-stream of `data:` events, then `[DONE]`.", "content": _SSE},
    **GENERATION_RESPONSES,
}


def json_response(body: dict[str, Any], status_code: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status_code, media_type="application/json")


def sse_response(
    events: AsyncIterator[bytes], headers: dict[str, str] | None = None
) -> StreamingResponse:
    return StreamingResponse(
        events, media_type="text/event-stream", headers={**SSE_HEADERS, **(headers or {})}
    )


def reply_response(reply: Reply) -> Response:
    """A service :class:`Reply` as HTTP: SSE when it streams, JSON otherwise."""
    if reply.events is not None:
        return sse_response(reply.events, reply.headers)
    response = json_response(reply.body or {})
    response.headers.update(reply.headers)
    return response


def disconnect_waiter(request: Request) -> DisconnectWaiter:
    """A coroutine factory that returns once the client has gone away.

    The body is already read, so the next ASGI message can only be ``http.disconnect``.
    """

    async def wait() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    return wait
