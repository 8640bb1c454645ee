"""Where cached answers live: a bounded in-process LRU, or Redis shared by replicas.

Both store opaque bytes under a key with a time to live. The memory store is bounded by
bytes (``CACHE_MAX_BYTES``), evicting the least recently used first. The Redis store uses its
own key prefix (``CACHE_REDIS_PREFIX``) on the same server rate limits may use. A store that
cannot be reached raises :class:`CacheUnavailableError`: the cache is then bypassed, never a
request failed.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError


class CacheUnavailableError(Exception):
    """The cache's storage did not answer."""


@dataclass(frozen=True, slots=True)
class Stored:
    value: bytes
    stored_at: float  # wall-clock seconds (Age is computed from it, across replicas)


class CacheStore(Protocol):
    async def get(self, key: str) -> Stored | None: ...

    async def put(self, key: str, value: bytes, ttl_s: float) -> int:
        """Store; returns how many entries were evicted to make room."""
        ...

    def size(self) -> tuple[int, int]:
        """(entries, bytes) held here; (-1, -1) when the store cannot tell cheaply."""
        ...

    async def aclose(self) -> None: ...


class MemoryCache:
    """An LRU bounded by the bytes of its values; entries expire after their TTL."""

    def __init__(self, max_bytes: int, clock: Callable[[], float] = time.time) -> None:
        self.max_bytes, self._clock = max_bytes, clock
        self._entries: OrderedDict[str, tuple[Stored, float]] = OrderedDict()
        self._bytes = 0

    async def get(self, key: str) -> Stored | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        stored, expires = entry
        if self._clock() >= expires:
            self._remove(key)
            return None
        self._entries.move_to_end(key)
        return stored

    async def put(self, key: str, value: bytes, ttl_s: float) -> int:
        if len(value) > self.max_bytes:
            return 0  # larger than the whole cache: not worth evicting everything for
        if key in self._entries:
            self._remove(key)
        now = self._clock()
        self._entries[key] = (Stored(value, now), now + ttl_s)
        self._bytes += len(value)
        evicted = 0
        while self._bytes > self.max_bytes:
            oldest = next(iter(self._entries))
            self._remove(oldest)
            evicted += 1
        return evicted

    def _remove(self, key: str) -> None:
        stored, _ = self._entries.pop(key)
        self._bytes -= len(stored.value)

    def size(self) -> tuple[int, int]:
        return len(self._entries), self._bytes

    async def aclose(self) -> None:
        self._entries.clear()
        self._bytes = 0


class RedisCache:
    """Entries as Redis strings ``<prefix>:<key>`` with a millisecond TTL; the stored time
    travels in the value (8 bytes of milliseconds, then the answer)."""

    def __init__(self, client: Redis, prefix: str) -> None:
        self.client, self.prefix = client, prefix

    @classmethod
    def from_url(cls, url: str, prefix: str, timeout_s: float) -> RedisCache:
        # One immediate retry heals a pooled connection Redis closed (a restart): GET and SET
        # are safe to repeat.
        client = Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 1),
        )
        return cls(client, prefix)

    async def get(self, key: str) -> Stored | None:
        try:
            raw = await self.client.get(f"{self.prefix}:{key}")
        except (RedisError, OSError, TimeoutError) as exc:
            raise CacheUnavailableError(f"redis: {exc}") from exc
        if not isinstance(raw, bytes) or len(raw) < 8:
            return None
        return Stored(raw[8:], int.from_bytes(raw[:8], "big") / 1000)

    async def put(self, key: str, value: bytes, ttl_s: float) -> int:
        stamp = int(time.time() * 1000).to_bytes(8, "big")
        try:
            await self.client.set(f"{self.prefix}:{key}", stamp + value, px=int(ttl_s * 1000))
        except (RedisError, OSError, TimeoutError) as exc:
            raise CacheUnavailableError(f"redis: {exc}") from exc
        return 0  # Redis evicts by its own maxmemory policy, unseen here

    def size(self) -> tuple[int, int]:
        return -1, -1

    async def aclose(self) -> None:
        await self.client.aclose()
