"""Token-bucket maths, pure: every function takes the time ``now`` instead of reading a clock.

A :class:`TokenBucket` is a *spec* (capacity, refill rate); its state is a
:class:`BucketState` (level, time of last update). Operations return new states, so the
same maths serves the in-memory storage and documents the Redis Lua script, which repeats
it line for line (``redis_storage.py``).

Contract of one bucket, for any sequence of calls with non-decreasing ``now``:

- the level stays within ``[0, capacity]``;
- what ``try_take`` admits over an interval of length ``T`` never exceeds
  ``capacity + refill_per_s * T`` (plus whatever was given back);
- ``wait_for`` is exact: after waiting it, the same cost fits; a cost above ``capacity``
  never fits and waits ``math.inf``.

A clock that steps backwards (skew, NTP) counts as zero elapsed time: it never refills.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Costs are whole tokens, but levels and times are floats: a refill that should land
# exactly on a cost may land a few ulps short of it. This slack keeps ``wait_for`` exact
# (waiting it is always enough) at the price of a millionth of a token.
EPSILON = 1e-6


@dataclass(frozen=True)
class BucketState:
    """A bucket's level as of ``updated_at`` (seconds on the storage's clock)."""

    level: float
    updated_at: float


@dataclass(frozen=True)
class TokenBucket:
    """A bucket holding at most ``capacity`` tokens, refilled at ``refill_per_s``."""

    capacity: float
    refill_per_s: float

    def __post_init__(self) -> None:
        if self.capacity <= 0 or self.refill_per_s <= 0:
            raise ValueError("a token bucket needs a positive capacity and refill rate")

    def full(self, now: float) -> BucketState:
        """A bucket that has been idle long enough to be full."""
        return BucketState(self.capacity, now)

    def refill(self, level: float, elapsed: float) -> float:
        """The level after ``elapsed`` seconds of refilling (negative elapsed counts as 0)."""
        return min(self.capacity, level + self.refill_per_s * max(0.0, elapsed))

    def at(self, state: BucketState, now: float) -> BucketState:
        """``state`` refilled up to ``now``."""
        level = self.refill(state.level, now - state.updated_at)
        return BucketState(level, max(now, state.updated_at))

    def fits(self, level: float, cost: float) -> bool:
        """Whether ``cost`` can be taken from ``level`` now."""
        return level + EPSILON >= cost

    def wait_for(self, level: float, cost: float) -> float:
        """Seconds until ``cost`` fits, from ``level``; 0 if it fits now, inf if never."""
        if self.fits(level, cost):
            return 0.0
        if cost > self.capacity:
            return math.inf
        return (cost - level) / self.refill_per_s

    def time_to_full(self, level: float) -> float:
        """Seconds until the bucket is full again (OpenAI's ``x-ratelimit-reset-*``)."""
        return max(0.0, self.capacity - level) / self.refill_per_s

    def try_take(self, state: BucketState, cost: float, now: float) -> tuple[BucketState, float]:
        """Take ``cost`` at ``now`` if it fits.

        Returns the new state and 0.0 when taken; otherwise the refilled, untaken state and
        the exact wait in seconds (``math.inf`` when ``cost`` exceeds the capacity).
        """
        current = self.at(state, now)
        wait = self.wait_for(current.level, cost)
        if wait > 0:
            return current, wait
        return BucketState(max(0.0, current.level - cost), current.updated_at), 0.0

    def give_back(self, state: BucketState, amount: float, now: float) -> BucketState:
        """Return ``amount`` unused tokens; the level never exceeds the capacity."""
        current = self.at(state, now)
        level = min(self.capacity, current.level + max(0.0, amount))
        return BucketState(level, current.updated_at)


# What an unset limit (``None``) becomes in the maths: a bucket no request can empty, so
# the storages and the Lua script need no special case for it. Headers never show it.
UNBOUNDED = 1e15


@dataclass(frozen=True)
class Limits:
    """One key's limits.

    ``burst`` is the request bucket's capacity (requests admitted at once after idling);
    ``None`` means one minute's worth (``rpm``). The token bucket holds one minute's worth
    (``tpm``). ``concurrency`` caps in-flight requests (``None``: no per-key cap). An
    ``rpm`` or ``tpm`` of ``None`` is no limit at all (:data:`UNBOUNDED`).
    """

    rpm: int | None
    tpm: int | None
    burst: int | None = None
    concurrency: int | None = None

    @property
    def requests(self) -> TokenBucket:
        if self.rpm is None:
            return TokenBucket(UNBOUNDED, UNBOUNDED)
        return TokenBucket(float(self.burst or self.rpm), self.rpm / 60.0)

    @property
    def tokens(self) -> TokenBucket:
        if self.tpm is None:
            return TokenBucket(UNBOUNDED, UNBOUNDED)
        return TokenBucket(float(self.tpm), self.tpm / 60.0)

    @property
    def unlimited(self) -> bool:
        """No bucket and no concurrency cap: nothing to charge or keep."""
        return self.rpm is None and self.tpm is None and self.concurrency is None


@dataclass(frozen=True)
class Levels:
    """Both buckets' levels for one key, as of the storage's ``now``."""

    requests: float
    tokens: float

    @classmethod
    def full(cls, limits: Limits) -> Levels:
        return cls(limits.requests.capacity, limits.tokens.capacity)


def retry_after(limits: Limits, levels: Levels, tokens: int) -> float:
    """Exact seconds until one request costing ``tokens`` fits both buckets (inf: never)."""
    return max(
        limits.requests.wait_for(levels.requests, 1), limits.tokens.wait_for(levels.tokens, tokens)
    )


def time_to_full(limits: Limits, levels: Levels) -> float:
    """Seconds until both buckets are full: how long a key's state is worth keeping."""
    return max(
        limits.requests.time_to_full(levels.requests), limits.tokens.time_to_full(levels.tokens)
    )
