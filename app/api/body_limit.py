"""Pure-ASGI middleware that refuses request bodies over a size limit with 413.

It checks ``Content-Length`` up front and also counts streamed (chunked) bodies, so a client
cannot bypass the limit by omitting the header.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import error_response
from app.errors import PayloadTooLargeError


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._refuse(scope, receive, send)
        elif declared is not None:
            # The HTTP parser never reads past Content-Length, so the body is within the
            # limit: no wrapper on the per-chunk send path of a stream.
            await self.app(scope, receive, send)
        else:
            await _CountingExchange(self, scope, receive, send).run()

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        error = PayloadTooLargeError(f"The request body is larger than {self.max_bytes} bytes.")
        await error_response(error)(scope, receive, send)


class _CountingExchange:
    """One request whose body arrives without a usable Content-Length.

    Past the limit we answer 413 ourselves and tell the app the client left, so it stops
    reading; whatever the app then tries to send is dropped.
    """

    def __init__(self, limit: BodyLimitMiddleware, scope: Scope, receive: Receive, send: Send):
        self.limit, self.scope, self._receive, self._send = limit, scope, receive, send
        self.seen, self.refused, self.started = 0, False, False

    async def run(self) -> None:
        await self.limit.app(self.scope, self.receive, self.send)

    async def receive(self) -> Message:
        if self.refused:
            return {"type": "http.disconnect"}
        message = await self._receive()
        self.seen += len(message.get("body", b""))
        if self.seen > self.limit.max_bytes and not self.started:
            self.refused = True
            await self.limit._refuse(self.scope, self._receive, self._send)
            return {"type": "http.disconnect"}
        return message

    async def send(self, message: Message) -> None:
        if self.refused:
            return
        self.started = self.started or message["type"] == "http.response.start"
        await self._send(message)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
