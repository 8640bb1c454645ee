"""Per-key rate limits: a request bucket, a token bucket, and a cap on concurrent requests.

The pipeline calls, for each request, in two steps so that a key over its limit buys no
work (parsing, tokenizing) before it is refused::

    charge = await limiter.admit(principal)        # 1 request + a concurrency slot: 429 / 503
    ...                                            # parse, tokenize
    await charge.reserve(prompt_tokens + n * max_tokens)   # the largest possible cost: 429
    try:
        ...  # generate; send charge.headers() with the response
    finally:
        await charge.settle(prompt_tokens + completion_tokens_actually_produced)

Each step is one atomic storage call, so concurrent requests cannot overrun the limit;
``settle`` gives back what was not used and frees the concurrency slot. ``settle`` is
idempotent and safe in ``finally`` blocks under cancellation (a client disconnect).
:meth:`RateLimiter.charge` does both steps at once. A key whose limits are all unset
(auth off and no ``RATE_LIMIT_*`` configured) is never sent to the storage.

Bucket state lives in a :class:`RateLimitStorage`: :class:`MemoryStorage` (one replica) or
``RedisStorage`` (shared by every replica). The concurrency cap is kept per replica: it
guards this replica's engine, and a crashed replica cannot leak shared slots.

If the storage is unreachable, ``fail_mode`` decides: ``"open"`` admits uncharged (a
warning, at most every ``warn_every_s``, and every failure reported to ``on_storage_error``
with ``failed_open=True``); ``"closed"`` raises ``ServiceUnavailableError`` (503) with
``retry_after``. A storage that answers with an error (:class:`StorageFailedError`) is
refused with 503 ``rate_limiter_failed`` in either mode.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections.abc import Callable
from typing import Any, Literal

from app.auth.buckets import Levels
from app.auth.keys import Principal
from app.auth.redis_storage import RedisStorage
from app.auth.responses import (
    bucket_exceeded,
    concurrency_exceeded,
    info_payload,
    rate_limit_headers,
    request_too_large,
)
from app.auth.settings import AuthSettings
from app.auth.storage import (
    Clock,
    MemoryStorage,
    RateLimitStorage,
    StorageFailedError,
    StorageUnavailableError,
)
from app.errors import ServiceUnavailableError

log = logging.getLogger(__name__)

StorageErrorListener = Callable[[str, Exception, bool], None]
"""Called with the operation (``charge``, ``refund``, ``peek``), the storage error, and
whether the limiter failed open (served without charging or refunding) because of it."""


class Charge:
    """One admitted request: its concurrency slot, its request and its token reservation.

    ``charged`` is False when the storage was down and the limiter failed open (nothing was
    taken, so nothing is given back, and the headers carry only the limits) or when the key
    has no limits to charge.
    """

    def __init__(self, limiter: RateLimiter, principal: Principal, levels: Levels | None):
        self.principal = principal
        self.tokens = 0
        self.levels = levels
        self._limiter = limiter
        self._settled = False

    @property
    def charged(self) -> bool:
        return self.levels is not None

    @property
    def settled(self) -> bool:
        return self._settled

    def headers(self) -> dict[str, str]:
        """The ``x-ratelimit-*`` headers for this request's response (levels at admission)."""
        return rate_limit_headers(self.principal.limits, self.levels)

    async def reserve(self, tokens: int) -> None:
        """Take the request's largest possible token cost, or raise (429 / 503); once.

        Raises ``RateLimitExceededError`` (429) when ``tokens`` exceeds the key's TPM
        (``should_retry=False``) or the bucket is too low (``retry_after`` exact).
        """
        if tokens < 0:
            raise ValueError("tokens must be >= 0")
        if self.tokens:
            raise RuntimeError("tokens were already reserved for this request")
        self.levels = await self._limiter._reserve(self, tokens)
        self.tokens = tokens

    async def settle(self, used_tokens: int) -> None:
        """Free the slot and refund ``tokens - used_tokens``; later calls do nothing.

        ``used_tokens`` is what the request really consumed (prompt + generated so far, also
        on error or disconnect; 0 if the engine never ran). More than was charged is not
        charged afterwards. The slot is freed before any await, and the refund is shielded,
        so a second cancellation cannot lose either. Never raises for storage failures.
        """
        if self._settled:
            return
        self._settled = True
        self._limiter._release(self.principal.name)
        unused = self.tokens - max(0, used_tokens)
        if self.charged and unused > 0:
            await self._limiter._refund_shielded(self.principal, unused)


class RateLimiter:
    """Charges requests against their key's buckets; see the module docstring for the flow."""

    def __init__(
        self,
        storage: RateLimitStorage,
        *,
        fail_mode: Literal["open", "closed"] = "open",
        unavailable_retry_after_s: float = 5.0,
        on_storage_error: StorageErrorListener | None = None,
        clock: Clock = time.monotonic,
        warn_every_s: float = 10.0,
    ) -> None:
        self.storage = storage
        self.fail_mode = fail_mode
        self._retry_after_s = unavailable_retry_after_s
        self._on_storage_error = on_storage_error
        self._clock = clock
        self._warn_every_s = warn_every_s
        self._last_warning = -math.inf
        self._in_flight: dict[str, int] = {}
        self._refunds: set[asyncio.Future[None]] = set()

    @classmethod
    def from_settings(
        cls,
        settings: AuthSettings,
        *,
        on_storage_error: StorageErrorListener | None = None,
        clock: Clock = time.monotonic,
    ) -> RateLimiter:
        """A limiter on ``RATE_LIMIT_STORAGE`` with ``RATE_LIMIT_FAIL_MODE``."""
        return cls(
            build_storage(settings, clock),
            fail_mode=settings.rate_limit_fail_mode,
            unavailable_retry_after_s=settings.rate_limit_unavailable_retry_after_s,
            on_storage_error=on_storage_error,
            clock=clock,
        )

    def in_flight(self, name: str) -> int:
        """Requests of key ``name`` admitted and not yet settled, on this replica."""
        return self._in_flight.get(name, 0)

    async def admit(self, principal: Principal) -> Charge:
        """Take one request and a concurrency slot, or raise; the :class:`Charge` must be
        settled.

        Raises ``RateLimitExceededError`` (429): over the concurrency cap (code
        ``concurrency_limit_exceeded``) or no request left in the bucket (``retry_after``
        exact). Raises ``ServiceUnavailableError`` (503) if the storage fails, or is down
        while failing closed.
        """
        self._acquire(principal)
        try:
            if principal.limits.unlimited:
                return Charge(self, principal, None)
            levels = await self._take(principal, requests=1, tokens=0, operation="charge")
            return Charge(self, principal, levels)
        except BaseException:
            self._release(principal.name)
            raise

    async def charge(self, principal: Principal, tokens: int) -> Charge:
        """:meth:`admit` and :meth:`Charge.reserve` in one call (the slot is freed on refusal)."""
        if tokens < 0:
            raise ValueError("tokens must be >= 0")
        if tokens > principal.limits.tokens.capacity:
            raise request_too_large(principal, tokens)
        charge = await self.admit(principal)
        try:
            await charge.reserve(tokens)
        except BaseException:
            await charge.settle(0)
            raise
        return charge

    async def _reserve(self, charge: Charge, tokens: int) -> Levels | None:
        principal = charge.principal
        if tokens > principal.limits.tokens.capacity:
            raise request_too_large(principal, tokens)
        if principal.limits.unlimited or tokens == 0:
            return charge.levels
        if not charge.charged:  # admitted uncharged (failing open): keep it that way
            return None
        return await self._take(principal, requests=0, tokens=tokens, operation="charge")

    async def _take(
        self, principal: Principal, *, requests: int, tokens: int, operation: str
    ) -> Levels | None:
        """One atomic take; ``None`` when the storage is down and the limiter fails open."""
        op_id = uuid.uuid4().hex
        try:
            outcome = await self.storage.charge(
                principal.name, principal.limits, tokens, requests=requests, op_id=op_id
            )
        except StorageUnavailableError as exc:
            self._report(operation, exc, failed_open=self.fail_mode == "open")
            if self.fail_mode == "closed":
                raise ServiceUnavailableError(
                    "Rate limiting is unavailable; retry shortly.",
                    code="rate_limiter_unavailable",
                    retry_after=self._retry_after_s,
                ) from exc
            return None
        except StorageFailedError as exc:
            self._report(operation, exc, failed_open=False)
            raise ServiceUnavailableError(
                "Rate limiting failed; the operator has been told.",
                code="rate_limiter_failed",
                retry_after=self._retry_after_s,
            ) from exc
        if not outcome.admitted:
            raise bucket_exceeded(principal, tokens, outcome.levels, requests)
        return outcome.levels

    def _acquire(self, principal: Principal) -> None:
        cap = principal.limits.concurrency
        count = self._in_flight.get(principal.name, 0)
        if cap is not None and count >= cap:
            raise concurrency_exceeded(principal)
        self._in_flight[principal.name] = count + 1

    def _release(self, name: str) -> None:
        count = self._in_flight.get(name, 0) - 1
        if count > 0:
            self._in_flight[name] = count
        else:
            self._in_flight.pop(name, None)

    async def _refund_shielded(self, principal: Principal, tokens: int) -> None:
        # A cancelled caller (client disconnect) must not cancel the refund: shield it, and
        # keep a reference so the task lives until done; aclose() waits for stragglers.
        task = asyncio.ensure_future(self._refund(principal, tokens))
        self._refunds.add(task)
        task.add_done_callback(self._refunds.discard)
        await asyncio.shield(task)

    async def _refund(self, principal: Principal, tokens: int) -> None:
        try:
            await self.storage.refund(
                principal.name, principal.limits, tokens, op_id=uuid.uuid4().hex
            )
        except (StorageUnavailableError, StorageFailedError) as exc:
            # Losing a refund only under-admits until the bucket refills: report, go on.
            self._report("refund", exc, failed_open=True)

    def _report(self, operation: str, exc: Exception, *, failed_open: bool) -> None:
        if self._on_storage_error is not None:
            self._on_storage_error(operation, exc, failed_open)
        now = self._clock()
        # One line per request during an outage would flood the logs: at most one per period.
        if now - self._last_warning >= self._warn_every_s:
            self._last_warning = now
            failing = "failing closed" if isinstance(exc, StorageFailedError) else None
            log.warning(
                "rate-limit storage %s during %s (%s); %s",
                "failed" if failing else "unavailable",
                operation,
                exc,
                failing or f"failing {self.fail_mode}",
            )

    async def info(self, principal: Principal) -> dict[str, Any]:
        """``GET /auth/info``: auth state, the caller's key, limits and remaining budget.

        Never includes a key or digest. ``remaining`` is None if the storage is down.
        """
        limits = principal.limits
        levels: Levels | None = None
        if not limits.unlimited:
            try:
                levels = await self.storage.peek(principal.name, limits)
            except (StorageUnavailableError, StorageFailedError) as exc:
                self._report("peek", exc, failed_open=True)
        return info_payload(principal, levels, self.in_flight(principal.name))

    async def aclose(self) -> None:
        """Wait for pending refunds, then close the storage."""
        if self._refunds:
            await asyncio.gather(*self._refunds, return_exceptions=True)
        await self.storage.aclose()


def build_storage(settings: AuthSettings, clock: Clock = time.monotonic) -> RateLimitStorage:
    """The storage named by ``RATE_LIMIT_STORAGE``: ``memory`` or a Redis URL."""
    url = settings.storage_url
    if url == "memory":
        return MemoryStorage(clock)
    return RedisStorage.from_url(
        url, timeout_s=settings.rate_limit_redis_timeout_s, prefix=settings.rate_limit_redis_prefix
    )
