"""Where rate-limit state lives: the storage protocol and the in-process storage.

A storage keeps, per key, the levels of a request bucket and a token bucket (maths in
``buckets.py``). Every call is atomic for its key. A storage that cannot reach its state
(connection refused, timed out) raises :class:`StorageUnavailableError`, and the limiter
fails open or closed as configured; one that answers with an error (a refused command, a
full memory, a broken script) raises :class:`StorageFailedError`, which always fails
closed: it is a misconfiguration, not an outage. ``RedisStorage`` (``redis_storage.py``)
is the shared implementation.

A charge or refund may carry an ``op_id``: a storage that retries a call (Redis, after a
lost reply) applies an operation with the same id once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from app.auth.buckets import BucketState, Levels, Limits, time_to_full

Clock = Callable[[], float]


class StorageUnavailableError(Exception):
    """The rate-limit state cannot be reached (Redis down, or too slow to answer)."""


class StorageFailedError(Exception):
    """The storage answered, with an error (permissions, memory, script): never fail open."""


@dataclass(frozen=True)
class ChargeOutcome:
    """Whether a charge was taken; ``levels`` after it if so, else the current levels."""

    admitted: bool
    levels: Levels


class RateLimitStorage(Protocol):
    """Where bucket levels live. Each call is atomic for its key; failures to reach the
    state raise :class:`StorageUnavailableError`."""

    async def charge(
        self, key: str, limits: Limits, tokens: int, *, requests: int = 1, op_id: str | None = None
    ) -> ChargeOutcome:
        """Take ``requests`` requests and ``tokens`` tokens if both fit, else take nothing."""
        ...

    async def refund(
        self, key: str, limits: Limits, tokens: int, *, op_id: str | None = None
    ) -> None:
        """Give back ``tokens`` tokens (capped at the bucket's capacity)."""
        ...

    async def peek(self, key: str, limits: Limits) -> Levels:
        """The current levels, taking nothing."""
        ...

    async def aclose(self) -> None: ...


class MemoryStorage:
    """Bucket levels in this process, timed by the injected ``clock``.

    Each method runs without awaiting, so it is atomic on the event loop. Keys whose buckets
    have refilled are dropped every ``sweep_every_s``: a missing key reads as full, so
    dropping them changes nothing but memory.
    """

    def __init__(self, clock: Clock = time.monotonic, sweep_every_s: float = 60.0) -> None:
        self._read_clock = clock
        # Times count from creation: small floats keep sub-microsecond precision, where a
        # monotonic clock months into uptime would cost the maths a few ulps.
        self._epoch = clock()
        self._sweep_every_s = sweep_every_s
        self._next_sweep = sweep_every_s
        self._entries: dict[str, tuple[Limits, BucketState, BucketState]] = {}

    def _clock(self) -> float:
        return self._read_clock() - self._epoch

    def __len__(self) -> int:
        return len(self._entries)

    def _states(self, key: str, limits: Limits, now: float) -> tuple[BucketState, BucketState]:
        entry = self._entries.get(key)
        if entry is None:
            return limits.requests.full(now), limits.tokens.full(now)
        return limits.requests.at(entry[1], now), limits.tokens.at(entry[2], now)

    async def charge(
        self, key: str, limits: Limits, tokens: int, *, requests: int = 1, op_id: str | None = None
    ) -> ChargeOutcome:
        # One call, no retry: op_id has nothing to deduplicate here.
        now = self._clock()
        self._sweep(now)
        request_state, token_state = self._states(key, limits, now)
        taken_requests, wait_requests = limits.requests.try_take(request_state, requests, now)
        taken_tokens, wait_tokens = limits.tokens.try_take(token_state, tokens, now)
        if wait_requests or wait_tokens:
            return ChargeOutcome(False, Levels(request_state.level, token_state.level))
        self._entries[key] = (limits, taken_requests, taken_tokens)
        return ChargeOutcome(True, Levels(taken_requests.level, taken_tokens.level))

    async def refund(
        self, key: str, limits: Limits, tokens: int, *, op_id: str | None = None
    ) -> None:
        now = self._clock()
        requests, token_state = self._states(key, limits, now)
        self._entries[key] = (limits, requests, limits.tokens.give_back(token_state, tokens, now))

    async def peek(self, key: str, limits: Limits) -> Levels:
        requests, token_state = self._states(key, limits, self._clock())
        return Levels(requests.level, token_state.level)

    async def aclose(self) -> None:
        self._entries.clear()

    def _sweep(self, now: float) -> None:
        if now < self._next_sweep:
            return
        self._next_sweep = now + self._sweep_every_s
        for key, (limits, requests, token_state) in list(self._entries.items()):
            levels = Levels(
                limits.requests.at(requests, now).level, limits.tokens.at(token_state, now).level
            )
            if time_to_full(limits, levels) == 0:
                del self._entries[key]
