"""Stop work when the client goes away, for requests that send no bytes until the end.

Streaming responses are cancelled by Starlette when the client disconnects; a non-streaming
handler is not, so without this an abandoned request would run to ``max_tokens``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from app.errors import GatewayError

T = TypeVar("T")

DisconnectWaiter = Callable[[], Awaitable[None]]


class ClientDisconnectedError(GatewayError):
    """The client closed the connection before the response was ready (nginx's 499)."""

    status = 499
    type = "client_closed_request"
    default_code = "client_disconnected"


async def run_until_disconnected(work: Coroutine[Any, Any, T], disconnected: DisconnectWaiter) -> T:
    """Run ``work``; if the client disconnects first, cancel it (aborting engine requests)."""
    work_task = asyncio.ensure_future(work)
    watch_task = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({work_task, watch_task}, return_when=asyncio.FIRST_COMPLETED)
        if work_task.done():
            return work_task.result()
        raise ClientDisconnectedError("The client disconnected.")
    finally:
        for task in (work_task, watch_task):
            task.cancel()
        await asyncio.gather(work_task, watch_task, return_exceptions=True)
