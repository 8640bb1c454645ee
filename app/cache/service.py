"""``ResponseCache``: deterministic answers, stored after they completed, replayed on a hit.

An answer is cached only when the request is deterministic (see :func:`deterministic`),
``Cache-Control`` allows it, and it ended well: every choice finished with ``stop`` or
``length``. Errors, and answers cut short (the client gone, a deadline, an engine death
that was not resumed), never reach :meth:`ResponseCache.store`. What is stored is neutral
(each choice's text, token count, finish reason, logprobs, token ids), so an answer produced
streamed is served non-streamed and back.

The storage failing is never a failed request: the cache is bypassed, with one warning at
most every ``WARN_EVERY_S``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import orjson

from app.cache.keys import deterministic
from app.cache.settings import CacheSettings
from app.cache.store import CacheStore, CacheUnavailableError, MemoryCache, RedisCache
from app.engine.protocol import SamplingOptions, TokenLogprob
from app.observability.metrics import GatewayMetrics
from app.services.formatting import ChoiceResult

log = logging.getLogger(__name__)
WARN_EVERY_S = 10.0
STORABLE_FINISH = ("stop", "length")


@dataclass(frozen=True, slots=True)
class CachePolicy:
    """What one request may do with the cache (its ``Cache-Control``, its determinism)."""

    lookup: bool
    store: bool

    @classmethod
    def of(cls, options: SamplingOptions, cache_control: str | None) -> CachePolicy | None:
        """None: the request bypasses the cache (not deterministic)."""
        if not deterministic(options):
            return None
        tokens = {part.strip().lower() for part in (cache_control or "").split(",")}
        return cls(lookup="no-cache" not in tokens, store="no-store" not in tokens)


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    """One stored answer: per job, its choices; and how old it is."""

    jobs: list[list[ChoiceResult]]
    age_s: float


class ResponseCache:
    """See the module docstring; ``store`` is :class:`MemoryCache` or :class:`RedisCache`."""

    def __init__(self, settings: CacheSettings, store: CacheStore, metrics: GatewayMetrics):
        self.settings, self._store, self._metrics = settings, store, metrics
        self._last_warning = -WARN_EVERY_S
        self.last_error: str | None = None

    @classmethod
    def from_settings(
        cls, settings: CacheSettings, metrics: GatewayMetrics
    ) -> ResponseCache | None:
        """The configured cache, or None with ``CACHE_BACKEND=off``."""
        backend = settings.backend
        if backend == "off":
            return None
        if backend == "memory":
            store: CacheStore = MemoryCache(settings.cache_max_bytes)
        else:
            store = RedisCache.from_url(
                backend, settings.cache_redis_prefix, settings.cache_redis_timeout_s
            )
        return cls(settings, store, metrics)

    async def lookup(self, key: str) -> CachedAnswer | bool:
        """The answer stored under ``key``; False for a miss, True when the storage is down
        (the request bypasses the cache)."""
        try:
            stored = await self._store.get(key)
        except CacheUnavailableError as exc:
            self._unavailable("lookup", exc)
            return True
        if stored is None:
            self._metrics.cache_event("miss")
            return False
        self._metrics.cache_event("hit")
        return CachedAnswer(_decode(stored.value), max(time.time() - stored.stored_at, 0.0))

    async def store(self, key: str, jobs: list[list[ChoiceResult]]) -> bool:
        """Store an answer that ended well; False when it did not (or storage failed)."""
        if not all(c.finish_reason in STORABLE_FINISH for choices in jobs for c in choices):
            return False
        try:
            evicted = await self._store.put(key, _encode(jobs), self.settings.cache_ttl_s)
        except CacheUnavailableError as exc:
            self._unavailable("store", exc)
            return False
        self._metrics.cache_event("store")
        if evicted:
            self._metrics.cache_event("eviction", evicted)
        self._refresh_size()
        return True

    def bypassed(self) -> None:
        self._metrics.cache_event("bypass")

    def _refresh_size(self) -> None:
        entries, size = self._store.size()
        if size >= 0:
            self._metrics.set_cache_size(entries, size)

    def _unavailable(self, operation: str, exc: Exception) -> None:
        self._metrics.cache_event("bypass")
        self.last_error = f"{operation}: {exc}"
        now = time.monotonic()
        if now - self._last_warning >= WARN_EVERY_S:
            self._last_warning = now
            log.warning("response cache unavailable during %s (%s); bypassing it", operation, exc)

    def health(self) -> dict[str, Any]:
        entries, size = self._store.size()
        return {
            "status": "degraded" if self.last_error and self._recent_warning() else "ok",
            "backend": "memory" if isinstance(self._store, MemoryCache) else "redis",
            "entries": entries if entries >= 0 else None,
            "bytes": size if size >= 0 else None,
            "scope": self.settings.cache_scope,
            # Hits take no queue place and no engine: they are served while engines restart.
            "serves_while_engines_are_down": True,
            "last_error": self.last_error,
        }

    def _recent_warning(self) -> bool:
        return time.monotonic() - self._last_warning < 60

    async def aclose(self) -> None:
        await self._store.aclose()


def _encode(jobs: list[list[ChoiceResult]]) -> bytes:
    return orjson.dumps(
        [
            [
                {
                    "index": c.index,
                    "text": c.text,
                    "num_tokens": c.num_tokens,
                    "finish_reason": c.finish_reason,
                    "logprobs": [[lp.token, lp.logprob, lp.top] for lp in c.logprobs],
                    "token_ids": c.token_ids,
                }
                for c in choices
            ]
            for choices in jobs
        ]
    )


def _decode(raw: bytes) -> list[list[ChoiceResult]]:
    return [
        [
            ChoiceResult(
                index=c["index"],
                text=c["text"],
                num_tokens=c["num_tokens"],
                finish_reason=c["finish_reason"],
                logprobs=[
                    TokenLogprob(token, logprob, [tuple(pair) for pair in top])
                    for token, logprob, top in c["logprobs"]
                ],
                token_ids=list(c["token_ids"]),
            )
            for c in choices
        ]
        for choices in orjson.loads(raw)
    ]
