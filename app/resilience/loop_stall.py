"""How long the event loop has been unable to run anything: its stalls, measured.

A loop that a starved CPU (or a blocking call) holds up fires its timers late, all at once:
a 2 s connect timeout then fails connects the kernel completed long before, and a deadline
looks passed by an upstream that was not slow at all. Whoever judges a deployment by a
timeout asks this monitor how much of the wait the gateway itself lost.

One monitor per event loop, shared by its users (:meth:`LoopStallMonitor.acquire` /
:meth:`release`); it ticks every ``TICK_S`` and counts any lateness beyond ``SLACK_S`` as
stall. :meth:`stalled_s` includes the stall still under way (a tick now overdue), which a
timer that fired in the same loop iteration would otherwise miss.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref

TICK_S = 0.05
SLACK_S = 0.02  # lateness a busy but responsive loop has anyway

_monitors: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopStallMonitor] = (
    weakref.WeakKeyDictionary()
)


class LoopStallMonitor:
    """Total stall of one loop, in seconds, growing only while the loop is held up."""

    def __init__(self) -> None:
        self._stalled_s = 0.0
        self._due: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._users = 0

    @classmethod
    def acquire(cls) -> LoopStallMonitor:
        """The running loop's monitor, ticking while anyone holds it."""
        monitor = _monitors.setdefault(asyncio.get_running_loop(), cls())
        monitor._users += 1
        if monitor._task is None:
            monitor._task = asyncio.create_task(monitor._tick(), name="loop-stall-monitor")
        return monitor

    def release(self) -> None:
        self._users -= 1
        if self._users <= 0 and self._task is not None:
            self._task.cancel()
            self._task, self._due = None, None

    def stalled_s(self) -> float:
        """Stall so far, including the one under way; subtract two readings for a span."""
        ongoing = 0.0
        if self._due is not None:
            ongoing = max(time.monotonic() - self._due - SLACK_S, 0.0)
        return self._stalled_s + ongoing

    async def _tick(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            while True:
                self._due = time.monotonic() + TICK_S
                await asyncio.sleep(TICK_S)
                late = time.monotonic() - self._due
                if late > SLACK_S:
                    self._stalled_s += late - SLACK_S
