"""The loop-stall monitor on a real event loop: a blocking call is counted as stall, the one
under way included; a loop that keeps running counts (about) none."""

from __future__ import annotations

import asyncio
import time

from app.resilience.loop_stall import LoopStallMonitor


def test_a_blocked_loop_is_counted_while_and_after_it_stalls() -> None:
    async def scenario() -> tuple[float, float, float]:
        monitor = LoopStallMonitor.acquire()
        try:
            await asyncio.sleep(0.2)
            idle = monitor.stalled_s()
            before = monitor.stalled_s()
            time.sleep(0.4)  # noqa: ASYNC251 (the point: the loop is held up, its tick overdue)
            during = monitor.stalled_s() - before
            await asyncio.sleep(0.1)  # the tick ran late and was counted
            after = monitor.stalled_s() - before
            return idle, during, after
        finally:
            monitor.release()

    idle, during, after = asyncio.run(scenario())
    assert idle < 0.05
    assert 0.3 < during <= 0.45
    assert abs(after - during) < 0.05


def test_the_monitor_is_one_per_loop_and_stops_with_its_last_user() -> None:
    async def scenario() -> None:
        first, second = LoopStallMonitor.acquire(), LoopStallMonitor.acquire()
        assert first is second and first._task is not None
        first.release()
        assert second._task is not None
        second.release()
        assert second._task is None

    asyncio.run(scenario())
