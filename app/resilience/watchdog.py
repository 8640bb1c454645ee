"""Stall detection for engine supervision: work outstanding, yet no token for too long.

Pure bookkeeping, no task of its own: the engine manager calls :meth:`note_progress` on
every engine step and :meth:`note_busy` when its count of unfinished requests changes
(or on each supervision tick), and its supervisor loop asks :meth:`stalled`. A hung
engine process (deadlocked worker, lost GPU) produces no exception, only silence; this
turns the silence into a decision the supervisor can act on (restart).
"""

from __future__ import annotations

from dataclasses import dataclass

from app.resilience.clock import Clock, LoopClock


@dataclass(frozen=True, slots=True)
class WatchdogStats:
    busy: int
    silent_for_s: float
    stalled: bool


class ProgressWatchdog:
    """``stalled()`` is true when ``busy > 0`` and nothing progressed for ``stall_after_s``.

    The silence is measured from the later of the last progress and the moment work
    arrived at an idle engine, so an engine idle for an hour is not "stalled" the instant
    a request arrives.
    """

    def __init__(self, stall_after_s: float, clock: Clock | None = None) -> None:
        if stall_after_s <= 0:
            raise ValueError(f"stall_after_s must be positive, got {stall_after_s}")
        self.stall_after_s = stall_after_s
        self._clock = clock or LoopClock()
        self._busy = 0
        self._last = self._clock.now()

    @property
    def busy(self) -> int:
        return self._busy

    def note_progress(self) -> None:
        """The engine produced output (call on every step; it is one clock read)."""
        self._last = self._clock.now()

    def note_busy(self, count: int) -> None:
        """``count`` requests are now unfinished in the engine."""
        if count > 0 and self._busy == 0:
            self._last = self._clock.now()
        self._busy = max(count, 0)

    def silent_for(self, now: float | None = None) -> float:
        """Seconds without progress while busy; 0 when idle."""
        if self._busy == 0:
            return 0.0
        return max((self._clock.now() if now is None else now) - self._last, 0.0)

    def stalled(self, now: float | None = None) -> bool:
        return self.silent_for(now) >= self.stall_after_s

    def reset(self) -> None:
        """Forget all work, e.g. after the engine was restarted."""
        self._busy = 0
        self._last = self._clock.now()

    def stats(self, now: float | None = None) -> WatchdogStats:
        silent = self.silent_for(now)
        return WatchdogStats(self._busy, silent, silent >= self.stall_after_s)
