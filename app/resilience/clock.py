"""The time source of the resilience layer, injected so tests control time.

A :class:`Clock` reads the time and schedules callbacks on the same time base. Production
uses :class:`LoopClock` (the running event loop's monotonic clock); tests use a manual
clock they advance by hand, so queue timeouts, deadlines and breaker reset times are
checked without sleeping.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol


class TimerHandle(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    """Monotonic seconds, and callbacks scheduled at a time on that scale."""

    def now(self) -> float: ...

    def call_at(self, when: float, callback: Callable[[], None]) -> TimerHandle:
        """Run ``callback`` in the event loop once ``now() >= when``."""
        ...


class LoopClock:
    """The running event loop's clock (``time.monotonic`` when no loop is running)."""

    def now(self) -> float:
        try:
            return asyncio.get_running_loop().time()
        except RuntimeError:
            # asyncio's default loops read time.monotonic, so the two scales agree.
            return time.monotonic()

    def call_at(self, when: float, callback: Callable[[], None]) -> TimerHandle:
        return asyncio.get_running_loop().call_at(when, callback)
