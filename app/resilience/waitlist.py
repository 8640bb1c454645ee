"""The admission queue's data structure: live waiters ordered by ``(key, seq)``.

A heap of ``(key, seq, waiter)``, as in aiolimiter: ``seq`` keeps arrival order among equal
keys. Removing a waiter from the middle (timeout, cancellation, displacement) only marks
it dead; dead entries are skipped when popped and purged before they dominate the heap,
so every operation stays O(log n) amortised, except the O(n) scans that only run when
the queue is full, when a request is about to queue, or for stats.
"""

from __future__ import annotations

import asyncio
import heapq
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

from app.resilience.clock import TimerHandle

T = TypeVar("T")


@dataclass(eq=False, slots=True)
class Waiter(Generic[T]):
    """One queued request: resolved with its grant, or failed with the reason it left."""

    priority: int
    key: float
    seq: int
    enqueued_at: float
    future: asyncio.Future[T]
    timer: TimerHandle | None = None
    live: bool = True  # False once taken, expired, displaced or cancelled


class WaitList(Generic[T]):
    """Live waiters, best (lowest key, then earliest) first."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Waiter[T]]] = []
        self._seq = 0
        self._live = 0
        self._depth: Counter[int] = Counter()

    def __len__(self) -> int:
        return self._live

    def push(self, priority: int, key: float, now: float, future: asyncio.Future[T]) -> Waiter[T]:
        self._seq += 1
        waiter = Waiter(priority, key, self._seq, now, future)
        heapq.heappush(self._heap, (key, self._seq, waiter))
        self._live += 1
        self._depth[priority] += 1
        return waiter

    def remove(self, waiter: Waiter[T]) -> bool:
        """Take ``waiter`` out (and cancel its timer); ``False`` if it was already out."""
        if not waiter.live:
            return False
        waiter.live = False
        self._live -= 1
        self._depth[waiter.priority] -= 1
        if not self._depth[waiter.priority]:
            del self._depth[waiter.priority]
        if waiter.timer is not None:
            waiter.timer.cancel()
        if len(self._heap) > 2 * self._live + 64:
            self._heap = [entry for entry in self._heap if entry[2].live]
            heapq.heapify(self._heap)
        return True

    def pop_best(self) -> Waiter[T] | None:
        while self._heap:
            waiter = heapq.heappop(self._heap)[2]
            if self.remove(waiter):
                return waiter
        return None

    def live(self) -> Iterator[Waiter[T]]:
        return (entry[2] for entry in self._heap if entry[2].live)

    def worst(self) -> Waiter[T] | None:
        return max(self.live(), key=lambda w: (w.key, w.seq), default=None)

    def count_ahead(self, key: float) -> int:
        """Waiters that run before a newcomer with ``key`` (ties go to those already here)."""
        return sum(1 for waiter in self.live() if waiter.key <= key)

    def depth_by_priority(self) -> dict[int, int]:
        return dict(sorted(self._depth.items()))

    def oldest_wait(self, now: float) -> float:
        return max((now - waiter.enqueued_at for waiter in self.live()), default=0.0)
