"""The cost per engine step of enforcing a deadline: ``python -m loadtest.step_cost``.

Reads a local async generator of N items (no engine, no HTTP) three ways and prints the
microseconds each item costs:

- ``bare``: ``async for`` over the stream (the floor);
- ``asyncio.timeout per step``: a wrapping generator entering a fresh ``asyncio.timeout``
  around each read, as the gateway did before (only the wait is cancelled, never the
  consumer's work between items);
- ``DeadlineGuard.wait``: one timer per request, the task cancelled only while it waits
  (:class:`app.resilience.deadline.DeadlineGuard`, what the gateway does now).

It runs on uvloop, as the server does. Figures are per item on this machine; compare them
with each other, not across machines.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import uvloop

from app.resilience.deadline import Deadline


async def _source(n: int) -> AsyncIterator[int]:
    for i in range(n):
        yield i


async def _bare(n: int) -> None:
    async for _ in _source(n):
        pass


async def _timeout_per_step(stream: AsyncIterator[int]) -> AsyncIterator[int]:
    while True:
        async with asyncio.timeout(None):
            try:
                item = await anext(stream)
            except StopAsyncIteration:
                return
        yield item


async def _with_timeout_per_step(n: int) -> None:
    async for _ in _timeout_per_step(_source(n)):
        pass


async def _with_guard(n: int) -> None:
    guard, stream = Deadline(3600.0).guard(), _source(n)
    try:
        while True:
            try:
                await guard.wait(anext(stream))
            except StopAsyncIteration:
                break
    finally:
        guard.close()


WAYS: dict[str, Callable[[int], Awaitable[None]]] = {
    "bare": _bare,
    "asyncio.timeout per step": _with_timeout_per_step,
    "DeadlineGuard.wait": _with_guard,
}


async def measure(n: int, repeats: int) -> dict[str, float]:
    """Best-of-``repeats`` microseconds per item for each way."""
    best: dict[str, float] = {}
    for _ in range(repeats):
        for name, way in WAYS.items():
            started = time.perf_counter()
            await way(n)
            per_item = (time.perf_counter() - started) / n * 1e6
            best[name] = min(best.get(name, per_item), per_item)
    return best


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.step_cost", description=__doc__)
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    results = uvloop.run(measure(args.items, args.repeats))
    for name, micros in results.items():
        print(f"{name:<26} {micros:6.2f} µs per step")
    return 0


if __name__ == "__main__":
    sys.exit(main())
