"""A clock the test advances by hand, implementing :class:`app.resilience.clock.Clock`.

Timers fire synchronously inside :meth:`ManualClock.advance`, in time order; the tasks
they wake run when the test next yields to the event loop (see :func:`settle`).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(order=True)
class _Timer:
    when: float
    seq: int
    callback: Callable[[], None] = field(compare=False)
    cancelled: bool = field(default=False, compare=False)

    def cancel(self) -> None:
        self.cancelled = True


class ManualClock:
    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._timers: list[_Timer] = []
        self._seq = itertools.count()

    def now(self) -> float:
        return self._now

    def call_at(self, when: float, callback: Callable[[], None]) -> _Timer:
        timer = _Timer(when, next(self._seq), callback)
        heapq.heappush(self._timers, timer)
        return timer

    def advance(self, seconds: float) -> None:
        """Move time forward, firing due timers (those already due fire on ``advance(0)``)."""
        target = self._now + seconds
        while self._timers and self._timers[0].when <= target:
            timer = heapq.heappop(self._timers)
            if not timer.cancelled:
                self._now = max(self._now, timer.when)
                timer.callback()
        self._now = target

    @property
    def pending(self) -> int:
        return sum(1 for timer in self._timers if not timer.cancelled)


async def settle(rounds: int = 10) -> None:
    """Let woken tasks run until they block again."""
    for _ in range(rounds):
        await asyncio.sleep(0)
