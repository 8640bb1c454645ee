"""Request deadlines: one point in time by which a request must have finished.

``REQUEST_TIMEOUT_S`` bounds every request; a client may ask for less with ``timeout``.
The same :class:`Deadline` caps the queue wait (see :mod:`app.resilience.queue`), the
wait for the first token and the whole generation. On expiry the caller sees
:class:`app.errors.GatewayTimeoutError` (504), and a stream wrapped by
:func:`with_deadline` is closed so the engine aborts the request and frees its KV cache.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from typing import TypeVar

from app.errors import GatewayTimeoutError, InvalidRequestError
from app.resilience.clock import Clock, LoopClock, TimerHandle

T = TypeVar("T")


class Deadline:
    """``timeout_s`` from now on ``clock``; pure arithmetic until enforced."""

    def __init__(self, timeout_s: float, clock: Clock | None = None) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        self.clock = clock or LoopClock()
        self.timeout_s = timeout_s
        self.at = self.clock.now() + timeout_s
        # A client's own short ``timeout`` expiring says nothing about the engine's health.
        self.client_chosen = False

    @classmethod
    def for_request(
        cls, requested_s: float | None, limit_s: float, clock: Clock | None = None
    ) -> Deadline:
        """The client's ``timeout`` capped by ``limit_s``; ``None`` means ``limit_s``.

        Raises :class:`InvalidRequestError` (400, ``param="timeout"``) for a non-positive value.
        """
        if requested_s is not None and requested_s <= 0:
            message = "timeout must be a positive number of seconds."
            raise InvalidRequestError(message, param="timeout")
        deadline = cls(min(requested_s or limit_s, limit_s), clock)
        deadline.client_chosen = requested_s is not None and requested_s < limit_s
        return deadline

    def remaining(self) -> float:
        """Seconds left, never negative."""
        return max(self.at - self.clock.now(), 0.0)

    @property
    def expired(self) -> bool:
        return self.clock.now() >= self.at

    def error(self) -> GatewayTimeoutError:
        # Retry-After on every 504 (issue 3): a timeout under load may pass on a later try.
        message = f"The request did not finish within {self.timeout_s:g}s."
        error = GatewayTimeoutError(message, retry_after=1.0)
        error.client_chosen = self.client_chosen
        return error

    def check(self) -> None:
        """Raise :class:`GatewayTimeoutError` if the deadline has passed."""
        if self.expired:
            raise self.error()

    @asynccontextmanager
    async def enforce(self) -> AsyncIterator[None]:
        """Cancel the block at the deadline and raise :class:`GatewayTimeoutError` instead.

        Only for blocks that do not ``yield`` to a consumer; wrap streams with
        :func:`with_deadline`.
        """
        scope = _ExpiryScope(self)
        try:
            async with scope:
                yield
        finally:
            scope.close()


async def with_deadline(stream: AsyncIterator[T], deadline: Deadline) -> AsyncGenerator[T, None]:
    """Yield ``stream``'s items until ``deadline``; then raise :class:`GatewayTimeoutError`.

    Only the wait for the next item is cancelled, never the consumer's own work between
    items. ``stream`` is always closed (``aclose``) when this generator ends, however it
    ends, so an expired or abandoned engine request is aborted.
    """
    scope = _ExpiryScope(deadline)
    try:
        while True:
            async with scope:
                try:
                    item = await anext(stream)
                except StopAsyncIteration:
                    return
            yield item
    finally:
        scope.close()
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()


class _ExpiryScope:
    """A reusable cancel scope that fires at ``deadline.at`` on the deadline's clock.

    One timer serves every entry; between entries an expiry is remembered and raised on
    the next entry. ``asyncio.timeout`` does the cancelling (and un-cancelling), so an
    outside cancellation is never mistaken for a deadline.
    """

    def __init__(self, deadline: Deadline) -> None:
        self._deadline = deadline
        self._timer: TimerHandle | None = None
        self._scope: asyncio.Timeout | None = None
        self._fired = False

    async def __aenter__(self) -> None:
        if self._fired or self._deadline.expired:
            raise self._deadline.error()
        if self._timer is None:
            self._timer = self._deadline.clock.call_at(self._deadline.at, self._fire)
        self._scope = asyncio.timeout(None)
        await self._scope.__aenter__()

    async def __aexit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        scope, self._scope = self._scope, None
        assert scope is not None
        try:
            await scope.__aexit__(exc_type, *exc)  # type: ignore[arg-type]
        except TimeoutError:
            if scope.expired():
                raise self._deadline.error() from None
            raise

    def _fire(self) -> None:
        self._fired = True
        if self._scope is not None:
            self._scope.reschedule(asyncio.get_running_loop().time())

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
