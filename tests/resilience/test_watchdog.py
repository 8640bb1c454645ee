"""ProgressWatchdog: a stall is outstanding work without engine output for stall_after_s."""

from __future__ import annotations

import pytest

from app.resilience.watchdog import ProgressWatchdog, WatchdogStats
from tests.resilience.manual_clock import ManualClock


def test_idle_engine_is_never_stalled() -> None:
    """With nothing outstanding, silence is not a stall."""
    clock = ManualClock()
    watchdog = ProgressWatchdog(60.0, clock)
    clock.advance(3600.0)
    watchdog.observe(0, last_output_at=0.0)
    assert not watchdog.stalled() and watchdog.silent_for() == 0.0


def test_busy_engine_without_output_for_stall_after_s_is_stalled() -> None:
    """Busy and silent for stall_after_s is a stall; output just before is not."""
    clock = ManualClock()
    watchdog = ProgressWatchdog(60.0, clock)
    watchdog.observe(3, clock.now())
    clock.advance(59.0)
    watchdog.observe(3, clock.now())
    clock.advance(59.0)
    assert not watchdog.stalled()
    clock.advance(1.0)
    assert watchdog.stalled() and watchdog.silent_for() == 60.0


def test_work_arriving_at_an_idle_engine_starts_the_silence_clock() -> None:
    """Long idleness before a request does not count as silence, however old the last
    output is."""
    clock = ManualClock()
    watchdog = ProgressWatchdog(60.0, clock)
    last = clock.now()
    clock.advance(3600.0)
    watchdog.observe(1, last)
    clock.advance(30.0)
    watchdog.observe(2, last)  # still busy: the clock keeps running
    assert watchdog.silent_for() == 30.0 and not watchdog.stalled()


def test_output_nobody_reads_still_counts_as_progress() -> None:
    """The engine's heartbeat is what it returned, read or not: a slow reader keeps the
    last output recent, so no stall."""
    clock = ManualClock()
    watchdog = ProgressWatchdog(2.0, clock)
    for _ in range(10):
        clock.advance(1.0)
        watchdog.observe(1, last_output_at=clock.now() - 0.1)
    assert not watchdog.stalled()


def test_finishing_all_work_or_reset_clears_a_stall() -> None:
    """Observing no work, and reset(), both end a stall."""
    clock = ManualClock()
    watchdog = ProgressWatchdog(10.0, clock)
    watchdog.observe(1, clock.now())
    clock.advance(11.0)
    assert watchdog.stalled()
    watchdog.observe(0, clock.now() - 11.0)
    assert not watchdog.stalled()
    watchdog.observe(1, clock.now() - 11.0)
    clock.advance(11.0)
    watchdog.reset()
    assert not watchdog.stalled() and watchdog.busy == 0


def test_explicit_now_and_stats() -> None:
    """stalled(now) judges at the given time; stats() summarises busy, silence, stall."""
    clock = ManualClock()
    watchdog = ProgressWatchdog(10.0, clock)
    watchdog.observe(2, clock.now())
    assert watchdog.stalled(clock.now() + 10.0)
    clock.advance(4.0)
    assert watchdog.stats() == WatchdogStats(busy=2, silent_for_s=4.0, stalled=False)


def test_non_positive_stall_threshold_is_refused() -> None:
    """stall_after_s must be positive."""
    with pytest.raises(ValueError):
        ProgressWatchdog(0.0, ManualClock())
