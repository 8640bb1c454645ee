"""``PipelineResponse``: the ASGI response that runs a generation request from its first
header to its last byte, and so owns everything the request takes.

Whatever ends the request — an error, the client gone while queued, before the first byte
or mid-stream, a deadline, a reader that stopped reading — it ends inside this response's
``__call__``, where the pipeline's run is an ``async with``: release never depends on a
body generator that may never run.

- The route handler does nothing but return it: the key is checked and the request
  charged before the body is read (the pipeline reads it).
- Once the body is in, a watcher turns ``http.disconnect`` into cancelling the request,
  wherever it waits (queue, engine, a write).
- Every write is bounded by the request's deadline (``REQUEST_TIMEOUT_S``): a client that
  never reads cannot hold a slot past it. Such a request is not completed (nothing more
  can be written), and the server closes the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from app.api import sse
from app.api.errors import as_gateway_error, error_body
from app.errors import ClientDisconnectedError, GatewayError, GatewayTimeoutError
from app.observability.context import record_error
from app.resilience.deadline import DeadlineGuard
from app.services.endpoint import Chunk, Reply
from app.services.pipeline import Inbound, PipelineRun

# The final error event and [DONE] after a failure: the reader is given this long.
FINAL_WRITE_S = 2.0
JSON_HEADERS = [(b"content-type", b"application/json")]
SSE_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8")] + [
    (name.lower().encode(), value.encode()) for name, value in sse.HEADERS.items()
]


class ClientTooSlowError(GatewayTimeoutError):
    """The deadline passed while a write waited on a client that does not read."""

    default_code = "client_read_timeout"
    client_chosen = True  # the reader's doing: says nothing about the engine


class PipelineResponse(Response):
    """Returned by a route handler; when served, opens the request's run on the pipeline
    (``open_run``: e.g. ``pipeline.runner(endpoint)``) and answers with what it returns."""

    def __init__(self, open_run: Callable[[Inbound], PipelineRun[Any]]) -> None:
        super().__init__()
        self.open_run = open_run

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        channel = HttpChannel(scope, receive, send)
        try:
            async with self.open_run(channel) as run:
                await _serve(run, channel)
        except asyncio.CancelledError:
            if not channel.disconnected:
                raise
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()  # we cancelled it, for a client that left: nothing to report
        except Exception as exc:
            if channel.started:
                raise  # mid-response: the server closes the connection
            # Nothing answered it yet: the framework's last resort (its error handlers), here,
            # since the fast lane has no middleware around it that would.
            error = as_gateway_error(exc)
            record_error(error)
            await channel.send_error(error)
        finally:
            await channel.close()


async def _serve(run: PipelineRun[Any], channel: HttpChannel) -> None:
    try:
        reply = await run.start()
    except GatewayError as exc:
        run.fail(exc)
        await channel.send_error(exc)
        return
    guard = run.lease.guard
    try:
        if reply.events is None:
            await channel.send_json(reply, guard)
        else:
            await _stream(run, channel, reply.events, reply.headers, guard)
    except ClientTooSlowError as exc:
        run.fail(exc)  # nothing more can be written; the server closes the connection


async def _stream(
    run: PipelineRun[Any],
    channel: HttpChannel,
    events: AsyncIterator[list[Chunk]],
    headers: dict[str, str],
    guard: DeadlineGuard,
) -> None:
    await channel.start(200, SSE_HEADERS, headers)
    try:
        async for chunks in events:
            if chunks:
                await channel.write(sse.frames(chunks), guard)
    except GatewayError as exc:
        if isinstance(exc, ClientTooSlowError):
            raise
        run.fail(exc)
        await channel.finish(b"data: " + error_body(exc) + b"\n\n" + sse.DONE)
        return
    await channel.finish(sse.DONE)


def _json_headers(body: bytes) -> list[tuple[bytes, bytes]]:
    return [*JSON_HEADERS, (b"content-length", str(len(body)).encode())]


class HttpChannel:
    """One HTTP exchange as the pipeline needs it: headers, the body, disconnects, writes."""

    def __init__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scope, self._receive, self._send = scope, receive, send
        self._headers = {k.decode("latin-1").lower(): v for k, v in scope["headers"]}
        self._watcher: asyncio.Task[None] | None = None
        self.disconnected = False
        self.started = False

    def header(self, name: str) -> str | None:
        value = self._headers.get(name)
        return value.decode("latin-1") if value is not None else None

    async def body(self) -> bytes:
        """The whole body; then disconnects are watched (nothing else reads ``receive``)."""
        parts = []
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                self.disconnected = True
                raise ClientDisconnectedError("The client disconnected while sending the body.")
            parts.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        self._watcher = asyncio.create_task(self._watch(asyncio.current_task()))
        return b"".join(parts)

    async def _watch(self, task: asyncio.Task[Any] | None) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            pass
        self._left(task)

    def _left(self, task: asyncio.Task[Any] | None) -> None:
        self.disconnected = True
        if task is not None:
            task.cancel()

    async def start(self, status: int, base: list[tuple[bytes, bytes]], extra: dict[str, str]):
        headers = base + [(k.lower().encode(), v.encode("latin-1")) for k, v in extra.items()]
        self.started = True
        await self._send({"type": "http.response.start", "status": status, "headers": headers})

    async def write(self, body: bytes, guard: DeadlineGuard) -> None:
        """One chunk of the body, waiting on a slow reader no later than the deadline."""
        message: Message = {"type": "http.response.body", "body": body, "more_body": True}
        try:
            await guard.wait(self._send(message))
        except GatewayTimeoutError as exc:
            raise ClientTooSlowError(exc.message) from exc

    async def finish(self, body: bytes) -> None:
        message: Message = {"type": "http.response.body", "body": body, "more_body": False}
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(FINAL_WRITE_S):
                await self._send(message)

    async def send_json(self, reply: Reply, guard: DeadlineGuard) -> None:
        body = orjson.dumps(reply.body)
        await self.start(200, _json_headers(body), reply.headers)
        message: Message = {"type": "http.response.body", "body": body, "more_body": False}
        try:
            await guard.wait(self._send(message))
        except GatewayTimeoutError as exc:
            raise ClientTooSlowError(exc.message) from exc

    async def send_error(self, error: GatewayError) -> None:
        body = error_body(error)
        await self.start(error.status, _json_headers(body), error.headers())
        await self.finish(body)

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
