"""Stall detection for engine supervision: work outstanding, yet no output for too long.

Pure bookkeeping, no task of its own: on each supervision tick the supervisor calls
:meth:`ProgressWatchdog.observe` with how many requests the engine holds and when the
engine last returned output — the engine's own heartbeat, not a consumer's: a client that
reads slowly (or not at all) leaves the engine working and must not look like a hung one.
A hung engine process (deadlocked worker, lost GPU) produces no exception, only silence;
this turns the silence into a decision the supervisor can act on (restart).
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
    """``stalled()`` is true when ``busy > 0`` and no output came for ``stall_after_s``.

    The silence is measured from the later of the last output and the moment work
    arrived at an idle engine, so an engine idle for an hour is not "stalled" the instant
    a request arrives. Times are on ``clock``'s scale (the loop's: ``time.monotonic``).
    """

    def __init__(self, stall_after_s: float, clock: Clock | None = None) -> None:
        if stall_after_s <= 0:
            raise ValueError(f"stall_after_s must be positive, got {stall_after_s}")
        self.stall_after_s = stall_after_s
        self._clock = clock or LoopClock()
        self._busy = 0
        self._busy_since = self._last_output = self._clock.now()

    @property
    def busy(self) -> int:
        return self._busy

    def observe(self, busy: int, last_output_at: float) -> None:
        """The engine holds ``busy`` unfinished requests and last returned output at
        ``last_output_at``."""
        if busy > 0 and self._busy == 0:
            self._busy_since = self._clock.now()
        self._busy = max(busy, 0)
        self._last_output = last_output_at

    def silent_for(self, now: float | None = None) -> float:
        """Seconds without output while busy; 0 when idle."""
        if self._busy == 0:
            return 0.0
        now = self._clock.now() if now is None else now
        return max(now - max(self._last_output, self._busy_since), 0.0)

    def stalled(self, now: float | None = None) -> bool:
        return self.silent_for(now) >= self.stall_after_s

    def reset(self) -> None:
        """Forget all work, e.g. after the engine was restarted."""
        self._busy = 0
        self._busy_since = self._last_output = self._clock.now()

    def stats(self, now: float | None = None) -> WatchdogStats:
        silent = self.silent_for(now)
        return WatchdogStats(self._busy, silent, silent >= self.stall_after_s)
