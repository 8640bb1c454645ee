"""merge_streams: interleaving, failure propagation, and closing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from app.services.streams import merge_streams


async def _count(
    name: str, n: int, closed: list[str], fail_at: int | None = None
) -> AsyncIterator[str]:
    try:
        for i in range(n):
            if i == fail_at:
                raise RuntimeError(f"{name} failed")
            await asyncio.sleep(0)
            yield f"{name}{i}"
    finally:
        closed.append(name)


def test_merge_yields_every_item_with_its_stream_index() -> None:
    """All items arrive, tagged with the index of the stream they came from."""

    async def scenario() -> list[tuple[int, str]]:
        closed: list[str] = []
        streams = [_count("a", 3, closed), _count("b", 2, closed)]
        return [item async for item in merge_streams(streams)]

    items = asyncio.run(scenario())
    assert sorted(items) == [(0, "a0"), (0, "a1"), (0, "a2"), (1, "b0"), (1, "b1")]


def test_failure_in_one_stream_is_raised_and_closes_the_others() -> None:
    """A failing stream raises through the merge, and the other streams are closed."""
    closed: list[str] = []

    async def scenario() -> None:
        streams = [_count("a", 1000, closed), _count("b", 5, closed, fail_at=2)]
        async for _ in merge_streams(streams):
            pass

    with pytest.raises(RuntimeError, match="b failed"):
        asyncio.run(scenario())
    assert sorted(closed) == ["a", "b"]
