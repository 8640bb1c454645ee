"""Blocking engine work (building, shutting down) in daemon threads the loop can leave.

``asyncio.to_thread`` runs on the loop's default executor, and ``asyncio.run`` waits for
every thread of it at exit: an engine build or shutdown still running then (SIGTERM while
starting, a shutdown that hangs) kept the process alive long after uvicorn had closed
its listener. A daemon thread never holds the process; a caller that stops waiting (it
was cancelled, or timed out) names what to do with a result that comes later.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar, cast

log = logging.getLogger(__name__)
T = TypeVar("T")
ENGINE_THREAD_PREFIX = "engine-"  # every name given here starts so (engine-build, ...)


async def in_daemon_thread(
    work: Callable[[], T], name: str, on_abandoned: Callable[[T], None] | None = None
) -> T:
    """``work()`` in a daemon thread; its result or exception. When the caller stops waiting
    before it ends, ``on_abandoned(result)`` gets the result, in that thread."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()
    abandoned = threading.Event()

    def give_up(result: T) -> None:
        if on_abandoned is not None:
            _spawn(lambda: on_abandoned(result), f"{name}-abandoned")

    def hand_over(result: T | None, error: BaseException | None) -> None:
        if future.done():  # the caller left while the result was on its way
            if error is None:
                give_up(cast(T, result))
        elif error is not None:
            future.set_exception(error)
        else:
            future.set_result(cast(T, result))

    def run() -> None:
        try:
            result = work()
        except BaseException as exc:  # handed to the awaiting caller
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting
                loop.call_soon_threadsafe(hand_over, None, exc)
            return
        if abandoned.is_set():
            if on_abandoned is not None:
                on_abandoned(result)
            return
        try:
            loop.call_soon_threadsafe(hand_over, result, None)
        except RuntimeError:  # the loop is closed: nobody will take it
            if on_abandoned is not None:
                on_abandoned(result)

    _spawn(run, name)
    try:
        return await future
    except BaseException:
        abandoned.set()
        # Cancelled just after the result came: it is still the caller's to give back.
        if future.done() and not future.cancelled() and future.exception() is None:
            give_up(future.result())
        raise


def join_engine_threads(timeout_s: float) -> bool:
    """Wait up to ``timeout_s`` for engine work still running in daemon threads (a build
    abandoned mid-start shuts its engine down when it ends); True if none is left."""
    deadline = time.monotonic() + timeout_s
    for thread in threading.enumerate():
        if thread.daemon and thread.name.startswith(ENGINE_THREAD_PREFIX):
            thread.join(max(0.0, deadline - time.monotonic()))
    return not any(
        t.is_alive() and t.name.startswith(ENGINE_THREAD_PREFIX) for t in threading.enumerate()
    )


def _spawn(target: Callable[[], None], name: str) -> None:
    threading.Thread(target=_logged(target, name), name=name, daemon=True).start()


def _logged(target: Callable[[], None], name: str) -> Callable[[], None]:
    def run() -> None:
        with contextlib.suppress(Exception):
            try:
                target()
            except Exception:
                log.exception("background engine work failed", extra={"work": name})
                raise

    return run
