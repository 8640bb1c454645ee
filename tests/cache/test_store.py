"""The cache's stores: an LRU bounded by bytes with TTLs, and Redis on a real server."""

from __future__ import annotations

import asyncio

import pytest

from app.cache.store import CacheUnavailableError, MemoryCache, RedisCache
from tests.support.redis_server import free_port


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_memory_cache_evicts_least_recently_used_past_its_bytes() -> None:
    clock = Clock()
    cache = MemoryCache(max_bytes=10, clock=clock)

    async def scenario() -> None:
        assert await cache.put("a", b"aaaa", 60) == 0
        assert await cache.put("b", b"bbbb", 60) == 0
        assert (await cache.get("a")) is not None  # a is now the most recent
        assert await cache.put("c", b"cccc", 60) == 1  # b goes, not a
        assert await cache.get("b") is None
        assert cache.size() == (2, 8)
        assert await cache.put("huge", b"x" * 11, 60) == 0  # larger than the cache: skipped
        assert await cache.get("huge") is None

    asyncio.run(scenario())


def test_memory_entries_expire_after_their_ttl() -> None:
    clock = Clock()
    cache = MemoryCache(max_bytes=100, clock=clock)

    async def scenario() -> None:
        await cache.put("k", b"v", ttl_s=2)
        clock.now += 1.9
        stored = await cache.get("k")
        assert stored is not None and stored.value == b"v" and stored.stored_at == 1000.0
        clock.now += 0.2
        assert await cache.get("k") is None and cache.size() == (0, 0)

    asyncio.run(scenario())


def test_redis_keeps_entries_with_their_age_and_ttl(redis_url: str) -> None:
    cache = RedisCache.from_url(redis_url, "gateway:cache", timeout_s=0.5)

    async def scenario() -> None:
        await cache.put("k", b"answer", ttl_s=0.3)
        stored = await cache.get("k")
        assert stored is not None and stored.value == b"answer"
        await asyncio.sleep(0.4)
        assert await cache.get("k") is None
        await cache.aclose()

    asyncio.run(scenario())


def test_an_unreachable_redis_is_unavailable_not_an_error() -> None:
    cache = RedisCache.from_url(f"redis://127.0.0.1:{free_port()}/0", "p", timeout_s=0.3)

    async def scenario() -> None:
        with pytest.raises(CacheUnavailableError):
            await cache.get("k")
        with pytest.raises(CacheUnavailableError):
            await cache.put("k", b"v", 1)
        await cache.aclose()

    asyncio.run(scenario())
