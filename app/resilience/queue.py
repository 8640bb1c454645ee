"""Priority admission: at most ``limit`` requests run in the engine, the rest wait in order.

Priorities follow vLLM's convention: **lower runs sooner**; arrival order breaks ties.
Waiting ages a request: its effective priority is ``priority - aging_rate * waited_s``.
All waiters age at the same rate, so the order between two of them never changes and the
heap key can be the time-invariant ``priority + aging_rate * enqueued_at``; a newcomer
gets its key the same way. A flood of high priority thus delays a low-priority request
by at most ``(its priority - theirs) / aging_rate`` seconds.

Failure modes of :meth:`PriorityAdmission.acquire`, all raised before any work starts:

* :class:`QueueFullError` (429): no place left and nobody waiting with a worse effective
  priority. A newcomer that outranks the worst waiter takes its place instead; the
  displaced waiter gets the ``QueueFullError``.
* :class:`OverloadedError` (503), load shedding: the wait estimated from the measured slot
  hold time, ``(waiters ahead + 1) * hold_time / limit``, exceeds the time the request may
  wait (``queue_timeout_s`` capped by its deadline), so it is refused now rather than
  timing out later. ``retry_after`` is that estimate.
* :class:`QueueTimeoutError` (503): waited ``queue_timeout_s`` (or until its deadline).
* :class:`ShuttingDownError` (503): :meth:`PriorityAdmission.drain` has begun.

A waiter whose task is cancelled (client gone) leaves the queue at once; a slot granted
in that same instant is released, never leaked. ``retry_after`` hints default to the
estimated time to work through the current queue.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from app.resilience.clock import Clock, LoopClock
from app.resilience.deadline import Deadline
from app.resilience.errors import (
    OverloadedError,
    QueueFullError,
    QueueTimeoutError,
    ShuttingDownError,
)
from app.resilience.settings import ResilienceSettings
from app.resilience.stats import AdmissionStats, DecayingRate, Ewma
from app.resilience.waitlist import Waiter, WaitList

_UNKNOWN_RETRY_AFTER_S = 1.0  # before any slot was released there is nothing to estimate from


class Slot:
    """The right to run one request in the engine. ``release()`` is idempotent.

    The holder releases it when the engine work ends; a stream owns its slot and releases
    it in ``finally``. ``waited_s`` is the time spent queued.
    """

    __slots__ = ("_admission", "_released", "admitted_at", "priority", "waited_s")

    def __init__(self, admission: PriorityAdmission, priority: int, now: float, waited: float):
        self._admission = admission
        self._released = False
        self.priority = priority
        self.admitted_at = now
        self.waited_s = waited

    @property
    def released(self) -> bool:
        return self._released

    def release(self) -> None:
        """Give the slot back (waking the next waiter); later calls do nothing."""
        if not self._released:
            self._released = True
            self._admission._on_release(self)

    def __enter__(self) -> Slot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class PriorityAdmission:
    """Bounded concurrency with a bounded, aging priority queue and load shedding."""

    def __init__(
        self,
        limit: int,
        max_queue: int,
        queue_timeout_s: float,
        *,
        aging_rate: float = 0.0,
        shedding: bool = True,
        clock: Clock | None = None,
        hold_alpha: float = 0.2,
        rate_tau_s: float = 10.0,
    ) -> None:
        if limit < 1 or max_queue < 0 or queue_timeout_s <= 0 or aging_rate < 0:
            raise ValueError("need limit >= 1, max_queue >= 0, queue_timeout_s > 0, aging >= 0")
        self.limit, self.max_queue, self.queue_timeout_s = limit, max_queue, queue_timeout_s
        self.aging_rate, self.shedding = aging_rate, shedding
        self._clock = clock or LoopClock()
        self._waiters: WaitList[Slot] = WaitList()
        self._in_flight = 0
        self._hold = Ewma(hold_alpha)
        self._completions = DecayingRate(rate_tau_s)
        self._totals: Counter[str] = Counter()
        self._accepting = True
        self._idle: asyncio.Future[None] | None = None

    @classmethod
    def from_settings(
        cls, settings: ResilienceSettings, clock: Clock | None = None
    ) -> PriorityAdmission:
        return cls(
            settings.concurrency_limit,
            settings.max_queue_size,
            settings.queue_timeout_s,
            aging_rate=settings.aging_rate,
            shedding=settings.load_shedding,
            clock=clock,
        )

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def queued(self) -> int:
        return len(self._waiters)

    async def acquire(self, priority: int, deadline: Deadline | None = None) -> Slot:
        """Wait for a slot; see the module docstring for the errors raised."""
        if not self._accepting:
            raise ShuttingDownError("The server is shutting down.", retry_after=1.0)
        now = self._clock.now()
        if self._in_flight < self.limit and not self._waiters:
            return self._grant(priority, now, waited=0.0)
        budget = self.queue_timeout_s
        if deadline is not None:
            budget = min(budget, deadline.remaining())
        key = priority + self.aging_rate * now
        self._shed_if_late(key, budget)
        self._make_room(key)
        return await self._wait(self._enqueue(priority, key, now, budget))

    @asynccontextmanager
    async def admit(self, priority: int, deadline: Deadline | None = None) -> AsyncIterator[Slot]:
        """``acquire`` as a context manager that always releases the slot."""
        with await self.acquire(priority, deadline) as slot:
            yield slot

    def estimate_wait(self, priority: int) -> float | None:
        """Seconds a request of ``priority`` arriving now would wait; ``None`` if unknown."""
        if self._in_flight < self.limit and not self._waiters:
            return 0.0
        return self._estimate(priority + self.aging_rate * self._clock.now())

    async def drain(self, grace_s: float) -> bool:
        """Stop admitting, fail every waiter, and wait up to ``grace_s`` for in-flight work.

        Returns ``True`` when nothing is left in flight. From now on ``acquire`` raises
        :class:`ShuttingDownError`.
        """
        self._accepting = False
        for waiter in list(self._waiters.live()):
            self._drop(
                waiter, "rejected", ShuttingDownError("The server is shutting down.", retry_after=5)
            )
        if self._in_flight == 0:
            return True
        self._idle = asyncio.get_running_loop().create_future()
        timer = self._clock.call_at(self._clock.now() + grace_s, self._set_idle)
        try:
            await self._idle
        finally:
            timer.cancel()
        return self._in_flight == 0

    def stats(self) -> AdmissionStats:
        now, hold = self._clock.now(), self._hold.value
        return AdmissionStats(
            limit=self.limit,
            in_flight=self._in_flight,
            max_queue=self.max_queue,
            queued=len(self._waiters),
            depth_by_priority=self._waiters.depth_by_priority(),
            oldest_wait_s=self._waiters.oldest_wait(now),
            admitted_total=self._totals["admitted"],
            rejected_total=self._totals["rejected"],
            shed_total=self._totals["shed"],
            timed_out_total=self._totals["timed_out"],
            cancelled_total=self._totals["cancelled"],
            hold_time_s=hold,
            service_rate=self.limit / hold if hold else None,
            completion_rate=self._completions.rate(now),
            estimated_wait_s=self._estimate(float("inf")),
            accepting=self._accepting,
        )

    # -- admission decisions ---------------------------------------------------------------

    def _estimate(self, key: float) -> float | None:
        if self._hold.value is None:
            return None
        return (self._waiters.count_ahead(key) + 1) * self._hold.value / self.limit

    def _retry_hint(self) -> float:
        estimate = self._estimate(float("inf"))
        return _UNKNOWN_RETRY_AFTER_S if estimate is None else estimate

    def _shed_if_late(self, key: float, budget: float) -> None:
        estimate = self._estimate(key) if self.shedding else None
        if estimate is not None and estimate > budget:
            self._totals["shed"] += 1
            raise OverloadedError(
                f"Server overloaded: estimated wait {estimate:.1f}s exceeds {budget:.1f}s.",
                retry_after=estimate,
            )

    def _make_room(self, key: float) -> None:
        if len(self._waiters) < self.max_queue:
            return
        worst = self._waiters.worst()
        if worst is None or worst.key <= key:
            self._totals["rejected"] += 1
            raise QueueFullError("The request queue is full.", retry_after=self._retry_hint())
        message = "Displaced from the full queue by a higher-priority request."
        self._drop(worst, "rejected", QueueFullError(message, retry_after=self._retry_hint()))

    # -- queue mechanics -------------------------------------------------------------------

    def _enqueue(self, priority: int, key: float, now: float, budget: float) -> Waiter[Slot]:
        future: asyncio.Future[Slot] = asyncio.get_running_loop().create_future()
        waiter = self._waiters.push(priority, key, now, future)
        waiter.timer = self._clock.call_at(now + budget, lambda: self._expire(waiter))
        return waiter

    async def _wait(self, waiter: Waiter[Slot]) -> Slot:
        try:
            return await waiter.future
        except asyncio.CancelledError:
            self._abandon(waiter)
            raise

    def _abandon(self, waiter: Waiter[Slot]) -> None:
        """The waiting task was cancelled: leave the queue, or give back a slot just granted."""
        future = waiter.future
        if self._waiters.remove(waiter):
            self._totals["cancelled"] += 1
        elif future.done() and not future.cancelled() and future.exception() is None:
            future.result().release()

    def _expire(self, waiter: Waiter[Slot]) -> None:
        message = "Timed out waiting in the queue for a free slot."
        self._drop(waiter, "timed_out", QueueTimeoutError(message, retry_after=self._retry_hint()))

    def _drop(self, waiter: Waiter[Slot], outcome: str, error: Exception) -> None:
        if self._waiters.remove(waiter):
            self._totals[outcome] += 1
            if not waiter.future.done():
                waiter.future.set_exception(error)

    def _dispatch(self) -> None:
        """Hand free slots to the best live waiters."""
        while self._in_flight < self.limit and (waiter := self._waiters.pop_best()):
            if waiter.future.done():  # its task was cancelled and has not resumed yet
                self._totals["cancelled"] += 1
                continue
            now = self._clock.now()
            waiter.future.set_result(self._grant(waiter.priority, now, now - waiter.enqueued_at))

    def _grant(self, priority: int, now: float, waited: float) -> Slot:
        self._in_flight += 1
        self._totals["admitted"] += 1
        return Slot(self, priority, now, waited)

    def _on_release(self, slot: Slot) -> None:
        now = self._clock.now()
        self._in_flight -= 1
        self._hold.add(now - slot.admitted_at)
        self._completions.add(now)
        self._dispatch()
        if self._in_flight == 0:
            self._set_idle()

    def _set_idle(self) -> None:
        if self._idle is not None and not self._idle.done():
            self._idle.set_result(None)
