"""Merging several engine streams into one, for completions with a list of prompts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from app.engine.protocol import EngineStep

T = TypeVar("T")

_END = object()


async def merge_streams(streams: Sequence[AsyncIterator[T]]) -> AsyncIterator[tuple[int, T]]:
    """Yield ``(stream index, item)`` as items arrive; closing the merge closes every stream.

    A failure in one stream is raised here at once and the others are cancelled (which
    aborts their engine requests).
    """
    queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()
    tasks = [asyncio.create_task(_pump(i, s, queue)) for i, s in enumerate(streams)]
    try:
        remaining = len(tasks)
        while remaining:
            index, item = await queue.get()
            if isinstance(item, BaseException):
                raise item
            if item is _END:
                remaining -= 1
                continue
            yield index, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _pump(index: int, stream: AsyncIterator[T], queue: asyncio.Queue) -> None:
    try:
        async for item in stream:
            await queue.put((index, item))
        await queue.put((index, _END))
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        await queue.put((index, exc))


@dataclass(slots=True)
class OpenStream:
    """An engine stream whose first step has already arrived."""

    first: EngineStep
    rest: AsyncIterator[EngineStep]
