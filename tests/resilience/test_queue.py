"""PriorityAdmission: ordering, limits, timeouts, shedding, cancellation, aging, draining."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.resilience.deadline import Deadline
from app.resilience.errors import (
    OverloadedError,
    QueueFullError,
    QueueTimeoutError,
    ShuttingDownError,
)
from app.resilience.queue import PriorityAdmission, Slot
from app.resilience.settings import ResilienceSettings
from tests.resilience.manual_clock import ManualClock, settle


def make(
    clock: ManualClock, limit: int = 1, max_queue: int = 10, **kw: object
) -> PriorityAdmission:
    kw.setdefault("queue_timeout_s", 30.0)
    return PriorityAdmission(limit, max_queue, clock=clock, **kw)  # type: ignore[arg-type]


def run(scenario: Callable[[ManualClock], Awaitable[None]]) -> None:
    asyncio.run(scenario(ManualClock()))  # type: ignore[arg-type]


def start(
    admission: PriorityAdmission, priority: int, log: list[str], name: str
) -> asyncio.Task[Slot]:
    async def wait() -> Slot:
        slot = await admission.acquire(priority)
        log.append(name)
        return slot

    return asyncio.ensure_future(wait())


async def learn_hold_time(admission: PriorityAdmission, clock: ManualClock, hold_s: float) -> None:
    """Teach the estimator that a slot is held ``hold_s`` seconds."""
    slot = await admission.acquire(5)
    clock.advance(hold_s)
    slot.release()


def test_free_slot_is_granted_at_once_and_release_is_idempotent() -> None:
    """Below the limit a request gets a slot without queueing; a second release is a no-op."""

    async def scenario(clock: ManualClock) -> None:
        admission = make(clock, limit=2)
        first, second = await admission.acquire(5), await admission.acquire(5)
        assert admission.in_flight == 2 and first.waited_s == 0.0
        first.release()
        first.release()
        assert admission.in_flight == 1 and first.released and not second.released
        assert admission.stats().admitted_total == 2

    run(scenario)


def test_waiters_run_by_priority_then_arrival_order() -> None:
    """Lower priority numbers run first; equal priorities keep arrival order."""

    async def scenario(clock: ManualClock) -> None:
        admission = make(clock)
        holder = await admission.acquire(5)
        log: list[str] = []
        order = [("a", 5), ("b", 1), ("c", 5), ("d", 1), ("e", 3)]
        tasks = [start(admission, p, log, name) for name, p in order]
        await settle()
        assert admission.stats().depth_by_priority == {1: 2, 3: 1, 5: 2}
        current = holder
        for _ in order:
            current.release()
            await settle()
            current = next(t.result() for t in tasks if t.done() and not t.result().released)
        assert log == ["b", "d", "e", "a", "c"]

    run(scenario)


def test_full_queue_answers_at_once_with_queue_full_and_retry_after() -> None:
    """With every slot taken and every place filled, a newcomer gets 429 queue_full at once."""

    async def scenario(clock: ManualClock) -> None:
        admission = make(clock, max_queue=2)
        await admission.acquire(5)
        tasks = [start(admission, 5, [], str(i)) for i in range(2)]
        await settle()
        with pytest.raises(QueueFullError) as caught:
            await admission.acquire(5)
        assert caught.value.status == 429 and caught.value.code == "queue_full"
        assert caught.value.retry_after is not None and caught.value.retry_after > 0
        assert admission.stats().rejected_total == 1 and admission.queued == 2
        for task in tasks:
            task.cancel()
        await settle()

    run(scenario)


def test_higher_priority_newcomer_displaces_the_worst_waiter_from_a_full_queue() -> None:
    """A full queue gives the place of its worst waiter to a newcomer that outranks it."""

    async def scenario(clock: ManualClock) -> None:
        admission = make(clock, max_queue=2)
        await admission.acquire(5)
        keep, worst = start(admission, 3, [], "keep"), start(admission, 7, [], "worst")
        await settle()
        newcomer = start(admission, 1, [], "new")
        await settle()
        assert isinstance(worst.exception(), QueueFullError)
        assert not keep.done() and not newcomer.done()
        assert admission.stats().depth_by_priority == {1: 1, 3: 1}
        with pytest.raises(QueueFullError):
            await admission.acquire(3)  # equal to the worst waiter: no displacement
        for task in (keep, newcomer):
            task.cancel()
        await settle()

    run(scenario)


def test_waiting_past_queue_timeout_fails_with_queue_timeout() -> None:
    """A waiter still queued after queue_timeout_s gets 503 queue_timeout and leaves."""

    async def scenario(clock: ManualClock) -> None:
        admission = make(clock, queue_timeout_s=30.0)
        await admission.acquire(5)
        task = start(admission, 5, [], "late")
        await settle()
        clock.advance(29.9)
        await settle()
        assert not task.done()
        clock.advance(0.1)
        await settle()
        error = task.exception()
        assert isinstance(error, QueueTimeoutError)
        assert error.status == 503 and error.code == "queue_timeout" and error.retry_after
        stats = admission.stats()
        assert stats.timed_out_total == 1 and stats.queued == 0 and stats.depth_by_priority == {}

    run(scenario)


def test_request_deadline_caps_the_queue_wait() -> None:
    """A request whose deadline is nearer than queue_timeout_s leaves the queue at it."""

    async def scenario(clock: ManualClock) -> None:
        admission = make(clock, queue_timeout_s=30.0)
        await admission.acquire(5)
        task = asyncio.ensure_future(admission.acquire(5, Deadline(2.0, clock)))
        await settle()
        clock.advance(2.0)
        await settle()
        assert isinstance(task.exception(), QueueTimeoutError)

    run(scenario)


def test_request_that_cannot_start_before_its_deadline_is_shed_at_once() -> None:
    """With a measured hold time, a wait estimate above the allowed wait is refused at once."""

    async def scenario(clock: ManualClock) -> None:
        admission = make(clock, limit=2, queue_timeout_s=30.0)
        await learn_hold_time(admission, clock, 20.0)
        await admission.acquire(5), await admission.acquire(5)
        assert admission.estimate_wait(5) == pytest.approx(10.0)  # (0 ahead + 1) * 20 / 2
        with pytest.raises(OverloadedError) as caught:
            await admission.acquire(5, Deadline(8.0, clock))
        assert caught.value.code == "overloaded" and caught.value.status == 503
        assert caught.value.retry_after == pytest.approx(10.0)
        queued = asyncio.ensure_future(admission.acquire(5, Deadline(12.0, clock)))
        await settle()
        assert not queued.done() and admission.stats().shed_total == 1
        # A newcomer now waits behind it: (1 + 1) * 20 / 2.
        assert admission.estimate_wait(5) == pytest.approx(20.0)
        queued.cancel()
        await settle()

    run(scenario)


def test_wait_estimate_counts_only_waiters_ahead_by_priority() -> None:
    """A high-priority newcomer is not shed for low-priority waiters it would overtake."""

    async def scenario(clock: ManualClock) -> None:
        admission = make(clock, queue_timeout_s=25.0)
        await learn_hold_time(admission, clock, 10.0)
        await admission.acquire(5)
        low = [start(admission, 9, [], str(i)) for i in range(3)]
        await settle()
        with pytest.raises(OverloadedError):
            await admission.acquire(9)  # 4 * 10s = 40s > 25s
        high = start(admission, 0, [], "high")  # 1 * 10s: fits
        await settle()
        assert not high.done()
        for task in [*low, high]:
            task.cancel()
        await settle()

    run(scenario)


def test_shedding_can_be_switched_off() -> None:
    """With shedding off, a request queues whatever the estimate says."""

    async def scenario(clock: ManualClock) -> None:
        admission = make(clock, queue_timeout_s=5.0, shedding=False)
        await learn_hold_time(admission, clock, 100.0)
        await admission.acquire(5)
        task = start(admission, 5, [], "x")
        await settle()
        assert not task.done() and admission.queued == 1
        task.cancel()
        await settle()

    run(scenario)


def test_cancelled_waiter_leaves_the_queue_at_once() -> None:
    """Cancelling a queued task frees its place and is never granted a slot."""

    async def scenario(clock: ManualClock) -> None:
        admission = make(clock, max_queue=1)
        holder = await admission.acquire(5)
        gone = start(admission, 5, [], "gone")
        await settle()
        gone.cancel()
        await settle()
        assert admission.queued == 0 and admission.stats().cancelled_total == 1
        log: list[str] = []
        task = start(admission, 5, log, "next")  # the place is free again
        await settle()
        holder.release()
        await settle()
        assert log == ["next"] and admission.in_flight == 1 and task.result().priority == 5

    run(scenario)


def test_slot_granted_to_a_task_cancelled_before_it_resumes_is_passed_on() -> None:
    """A grant that races with cancellation goes back to the pool, not into a leak."""

    async def scenario(clock: ManualClock) -> None:
        admission = make(clock)
        holder = await admission.acquire(5)
        racer = start(admission, 5, [], "racer")
        log: list[str] = []
        after = start(admission, 5, log, "after")
        await settle()
        holder.release()  # resolves racer's future; racer has not run yet
        racer.cancel()
        await settle()
        assert racer.cancelled() and log == ["after"] and admission.in_flight == 1
        assert after.result().waited_s == 0.0  # the manual clock did not move

    run(scenario)


def test_aging_lets_a_long_waiting_low_priority_request_overtake_fresh_high_priority() -> None:
    """After waiting (gap / aging_rate) seconds, low priority runs before a fresh high one."""

    async def scenario(clock: ManualClock) -> None:
        admission = make(clock, aging_rate=1.0)
        holder = await admission.acquire(5)
        log: list[str] = []
        start(admission, 10, log, "old-low")
        await settle()
        clock.advance(10.5)
        start(admission, 0, log, "fresh-high")
        await settle()
        holder.release()
        await settle()
        assert log == ["old-low"]

    run(scenario)


def test_without_aging_high_priority_always_goes_first() -> None:
    """With aging_rate 0, priority is strict however long the low request waited."""

    async def scenario(clock: ManualClock) -> None:
        admission = make(clock, aging_rate=0.0)
        holder = await admission.acquire(5)
        log: list[str] = []
        start(admission, 10, log, "old-low")
        await settle()
        clock.advance(29.0)
        start(admission, 0, log, "fresh-high")
        await settle()
        holder.release()
        await settle()
        assert log == ["fresh-high"]

    run(scenario)


def test_stats_report_depths_rates_and_estimates() -> None:
    """Stats expose depth per priority, in-flight, totals, hold time, rates and wait estimate."""

    async def scenario(clock: ManualClock) -> None:
        admission = make(clock, limit=2)
        assert admission.stats().estimated_wait_s is None
        await learn_hold_time(admission, clock, 4.0)
        await admission.acquire(1), await admission.acquire(1)
        tasks = [start(admission, p, [], str(p)) for p in (2, 2, 7)]
        await settle()
        clock.advance(3.0)
        stats = admission.stats()
        assert stats.hold_time_s == 4.0 and stats.service_rate == 0.5
        assert stats.in_flight == 2 and stats.queued == 3 and stats.oldest_wait_s == 3.0
        assert stats.estimated_wait_s == pytest.approx(8.0)  # (3 + 1) * 4 / 2
        assert 0 < stats.completion_rate < 1
        data = stats.as_dict()
        assert data["depth_by_priority"] == {"2": 2, "7": 1} and data["admitted_total"] == 3
        for task in tasks:
            task.cancel()
        await settle()

    run(scenario)


def test_admit_context_releases_the_slot_even_on_error() -> None:
    """``async with admission.admit(...)`` releases its slot when the body raises."""

    async def scenario(clock: ManualClock) -> None:
        admission = make(clock)
        with pytest.raises(RuntimeError):
            async with admission.admit(5):
                assert admission.in_flight == 1
                raise RuntimeError("engine failed")
        assert admission.in_flight == 0

    run(scenario)


def test_drain_rejects_waiters_and_new_requests_then_waits_for_in_flight() -> None:
    """drain() fails queued and new requests with shutting_down and returns once idle."""

    async def scenario(clock: ManualClock) -> None:
        admission = make(clock)
        holder = await admission.acquire(5)
        waiter = start(admission, 5, [], "w")
        await settle()
        drained = asyncio.ensure_future(admission.drain(grace_s=10.0))
        await settle()
        assert isinstance(waiter.exception(), ShuttingDownError)
        with pytest.raises(ShuttingDownError):
            await admission.acquire(0)
        assert not drained.done()
        holder.release()
        await settle()
        assert drained.result() is True and not admission.stats().accepting

    run(scenario)


def test_drain_gives_up_after_the_grace_period() -> None:
    """drain() returns False when work is still in flight after grace_s."""

    async def scenario(clock: ManualClock) -> None:
        admission = make(clock)
        await admission.acquire(5)
        drained = asyncio.ensure_future(admission.drain(grace_s=5.0))
        await settle()
        clock.advance(5.0)
        await settle()
        assert drained.result() is False and admission.in_flight == 1

    run(scenario)


def test_from_settings_uses_the_configured_limits() -> None:
    """The settings group maps onto the constructor."""
    admission = PriorityAdmission.from_settings(
        ResilienceSettings(concurrency_limit=3, max_queue_size=4, queue_timeout_s=5, aging_rate=2)
    )
    assert (admission.limit, admission.max_queue, admission.queue_timeout_s) == (3, 4, 5.0)
    assert admission.aging_rate == 2.0 and admission.shedding


# -- property: the limit holds under any interleaving --------------------------------------

request = st.tuples(
    st.integers(0, 10),  # priority
    st.integers(0, 12),  # loop turns before it arrives
    st.integers(0, 6),  # ticks it holds the slot
    st.booleans(),  # whether its client gives up while it waits
)


@settings(max_examples=60, deadline=None)
@given(
    limit=st.integers(1, 4),
    max_queue=st.integers(0, 6),
    requests=st.lists(request, min_size=1, max_size=25),
)
def test_in_flight_never_exceeds_limit_and_everything_is_accounted(
    limit: int, max_queue: int, requests: list[tuple[int, int, int, bool]]
) -> None:
    """Under a random concurrent workload in_flight stays <= limit, and every request ends
    admitted, rejected, shed, timed out or cancelled, leaving nothing held or queued."""

    async def scenario(clock: ManualClock) -> None:
        admission = make(clock, limit, max_queue, queue_timeout_s=3.0, aging_rate=0.5)
        peak = 0

        async def one(priority: int, delay: int, hold: int, give_up: bool) -> None:
            nonlocal peak
            for _ in range(delay):
                await asyncio.sleep(0)
            try:
                waiting = asyncio.ensure_future(admission.acquire(priority))
                if give_up:
                    asyncio.get_running_loop().call_soon(waiting.cancel)
                slot = await waiting
            except (QueueFullError, QueueTimeoutError, OverloadedError, asyncio.CancelledError):
                return
            with slot:
                peak = max(peak, admission.in_flight)
                for _ in range(hold):
                    await asyncio.sleep(0)
                    clock.advance(1.0)

        workers = asyncio.gather(*(one(*r) for r in requests))
        while not workers.done():
            clock.advance(0.5)
            await asyncio.sleep(0)
        await workers
        stats = admission.stats()
        assert peak <= limit
        assert stats.in_flight == 0 and stats.queued == 0 and stats.depth_by_priority == {}
        ended = (
            stats.admitted_total
            + stats.rejected_total
            + stats.shed_total
            + stats.timed_out_total
            + stats.cancelled_total
        )
        assert ended == len(requests)

    run(scenario)
