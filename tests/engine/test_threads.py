"""in_daemon_thread: blocking engine work the loop can stop waiting for, whose late result
is handed to a clean-up instead of being lost (an engine built after a SIGTERM)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from app.engine.threads import in_daemon_thread, join_engine_threads


def test_the_result_and_the_exception_come_back() -> None:
    """A finished work's value is returned; its exception is raised in the caller."""

    async def scenario() -> None:
        assert await in_daemon_thread(lambda: 42, "engine-test") == 42
        with pytest.raises(KeyError):
            await in_daemon_thread(lambda: {}["x"], "engine-test")

    asyncio.run(scenario())


def test_a_result_that_comes_after_the_caller_left_goes_to_on_abandoned() -> None:
    """The caller times out (SIGTERM mid-build): the work is not waited for, and what it
    builds afterwards is handed to ``on_abandoned`` in its thread, never dropped."""
    abandoned: list[str] = []
    release = threading.Event()

    def build() -> str:
        release.wait(5)
        return "engine"

    async def scenario() -> None:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(
                in_daemon_thread(build, "engine-test", on_abandoned=abandoned.append), 0.05
            )

    started = time.monotonic()
    asyncio.run(scenario())  # returns although the work still runs: a daemon thread
    assert time.monotonic() - started < 2
    release.set()
    assert join_engine_threads(5)
    assert abandoned == ["engine"]


def test_the_threads_never_hold_the_loops_exit() -> None:
    """Unlike asyncio.to_thread, work still running does not keep asyncio.run from ending."""
    release = threading.Event()

    async def scenario() -> None:
        task = asyncio.ensure_future(in_daemon_thread(lambda: release.wait(5), "engine-test"))
        await asyncio.sleep(0.05)
        task.cancel()

    started = time.monotonic()
    asyncio.run(scenario())
    assert time.monotonic() - started < 2
    assert not join_engine_threads(0.01)
    release.set()
    assert join_engine_threads(5)
