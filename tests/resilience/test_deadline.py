"""Deadline and DeadlineGuard: capping, expiry, and cancelling only what waits."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from app.errors import GatewayTimeoutError, InvalidRequestError
from app.resilience.deadline import Deadline
from tests.resilience.manual_clock import ManualClock, settle


class Source:
    """An engine-like stream whose items the test releases one by one."""

    def __init__(self) -> None:
        self.items: asyncio.Queue[str | None] = asyncio.Queue()
        self.closed = False

    async def stream(self) -> AsyncIterator[str]:
        try:
            while (item := await self.items.get()) is not None:
                yield item
        finally:
            self.closed = True


def test_per_request_timeout_is_capped_by_the_limit() -> None:
    """A client timeout below the limit is kept; above it or absent, the limit applies."""
    clock = ManualClock()
    assert Deadline.for_request(10, 300, clock).timeout_s == 10
    assert Deadline.for_request(900, 300, clock).timeout_s == 300
    assert Deadline.for_request(None, 300, clock).timeout_s == 300


def test_non_positive_request_timeout_is_a_client_error() -> None:
    """timeout <= 0 is refused with 400 naming the timeout parameter."""
    with pytest.raises(InvalidRequestError) as caught:
        Deadline.for_request(0, 300, ManualClock())
    assert caught.value.param == "timeout" and caught.value.status == 400


def test_remaining_counts_down_and_check_raises_504_once_expired() -> None:
    """remaining() follows the clock, never below 0; check() raises GatewayTimeoutError."""
    clock = ManualClock()
    deadline = Deadline(5.0, clock)
    clock.advance(2.0)
    assert deadline.remaining() == 3.0 and not deadline.expired
    deadline.check()
    clock.advance(4.0)
    assert deadline.remaining() == 0.0 and deadline.expired
    with pytest.raises(GatewayTimeoutError) as caught:
        deadline.check()
    assert caught.value.status == 504 and caught.value.code == "timeout"


def test_guarded_stream_within_its_deadline_passes_through() -> None:
    """Items pass unchanged, the end of the stream is the end, and close() drops the timer."""

    async def scenario() -> tuple[list[str], int]:
        clock, source = ManualClock(), Source()
        for item in ("a", "b", None):
            source.items.put_nowait(item)
        guard, stream, items = Deadline(5.0, clock).guard(), source.stream(), []
        while True:
            try:
                items.append(await guard.wait(anext(stream)))
            except StopAsyncIteration:
                break
        guard.close()
        return items, clock.pending

    assert asyncio.run(scenario()) == (["a", "b"], 0)


def test_expiry_while_waiting_for_an_item_raises_504_and_ends_the_stream() -> None:
    """A stream that goes silent past the deadline ends in GatewayTimeoutError; the
    cancellation runs through the stream's own ``finally`` (where the engine aborts)."""

    async def scenario() -> None:
        clock, source = ManualClock(), Source()
        source.items.put_nowait("first")
        guard, stream = Deadline(5.0, clock).guard(), source.stream()
        assert await guard.wait(anext(stream)) == "first"
        waiting = asyncio.ensure_future(guard.wait(anext(stream)))
        await settle()
        clock.advance(5.0)
        await settle()
        assert isinstance(waiting.exception(), GatewayTimeoutError)
        assert source.closed

    asyncio.run(scenario())


def test_expiry_between_items_is_raised_on_the_next_wait_only() -> None:
    """The consumer's own work between items is never cancelled; the next wait raises."""

    async def scenario() -> None:
        clock, source = ManualClock(), Source()
        source.items.put_nowait("first")
        guard, stream = Deadline(5.0, clock).guard(), source.stream()
        await guard.wait(anext(stream))
        clock.advance(6.0)
        await settle()
        await asyncio.sleep(0)  # the consumer "works" past the deadline undisturbed
        source.items.put_nowait("second")
        with pytest.raises(GatewayTimeoutError):
            await guard.wait(anext(stream))
        await stream.aclose()

    asyncio.run(scenario())


def test_one_guard_serves_the_task_that_opens_and_the_task_that_reads() -> None:
    """A stream's first step is awaited in the request's task and the rest in the
    response's: expiry cancels whichever task is waiting, and no other."""

    async def scenario() -> None:
        clock, source = ManualClock(), Source()
        source.items.put_nowait("first")
        guard, stream = Deadline(5.0, clock).guard(), source.stream()
        opener = asyncio.ensure_future(guard.wait(anext(stream)))
        assert await opener == "first"
        bystander = asyncio.ensure_future(asyncio.Event().wait())
        reader = asyncio.ensure_future(guard.wait(anext(stream)))
        await settle()
        clock.advance(5.0)
        await settle()
        assert isinstance(reader.exception(), GatewayTimeoutError)
        assert not bystander.done()
        bystander.cancel()

    asyncio.run(scenario())


def test_timeout_error_from_the_stream_itself_is_not_turned_into_504() -> None:
    """Only the deadline's own expiry becomes GatewayTimeoutError."""

    async def failing() -> AsyncIterator[str]:
        raise TimeoutError("engine rpc timed out")
        yield "never"

    async def scenario() -> None:
        await Deadline(5.0, ManualClock()).guard().wait(anext(failing()))

    with pytest.raises(TimeoutError, match="engine rpc"):
        asyncio.run(scenario())


def test_outside_cancellation_stays_a_cancellation() -> None:
    """Cancelling the consumer raises CancelledError, not a deadline error."""

    async def scenario() -> None:
        source = Source()
        guard, stream = Deadline(5.0, ManualClock()).guard(), source.stream()
        waiting = asyncio.ensure_future(guard.wait(anext(stream)))
        await settle()
        waiting.cancel()
        await settle()
        assert waiting.cancelled() and source.closed

    asyncio.run(scenario())


def test_guard_cancels_a_block_at_the_deadline() -> None:
    """``async with deadline.guard()`` turns expiry inside the block into a 504."""

    async def scenario() -> None:
        clock = ManualClock()
        deadline = Deadline(3.0, clock)

        async def guarded() -> None:
            async with deadline.guard():
                await asyncio.Event().wait()

        task = asyncio.ensure_future(guarded())
        await settle()
        clock.advance(3.0)
        await settle()
        assert isinstance(task.exception(), GatewayTimeoutError) and clock.pending == 0

    asyncio.run(scenario())


def test_guard_on_an_expired_deadline_raises_at_once() -> None:
    """Entering after the deadline raises before running the block or the awaitable."""
    clock = ManualClock()
    deadline = Deadline(1.0, clock)
    clock.advance(1.0)
    ran: list[bool] = []

    async def work() -> None:
        ran.append(True)

    async def scenario() -> None:
        async with deadline.guard():
            ran.append(True)

    with pytest.raises(GatewayTimeoutError):
        asyncio.run(scenario())
    with pytest.raises(GatewayTimeoutError):
        asyncio.run(deadline.guard().wait(work()))
    assert ran == []


def test_default_clock_is_the_event_loop() -> None:
    """Without an injected clock the deadline fires on the running loop's time (real, 50 ms)."""

    async def scenario() -> None:
        await Deadline(0.05).guard().wait(anext(Source().stream()))

    with pytest.raises(GatewayTimeoutError):
        asyncio.run(scenario())
