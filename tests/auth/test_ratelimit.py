"""RateLimiter over MemoryStorage, timed by a manual clock: admission, refunds, concurrency,
headers, errors and the /auth/info payload."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest
from pydantic import SecretStr

from app.auth.buckets import Limits
from app.auth.keys import KeyStore, Principal
from app.auth.ratelimit import Charge, RateLimiter, build_storage
from app.auth.redis_storage import RedisStorage
from app.auth.responses import RateLimitExceededError, format_duration, rate_limit_headers
from app.auth.settings import AuthSettings
from app.auth.storage import MemoryStorage
from app.errors import RateLimitError

T = TypeVar("T")


class ManualClock:
    """A clock that moves only when the test says so."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make(
    limits: Limits, name: str = "alice"
) -> tuple[RateLimiter, MemoryStorage, ManualClock, Principal]:
    clock = ManualClock()
    storage = MemoryStorage(clock)
    return RateLimiter(storage, clock=clock), storage, clock, Principal(name, limits)


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def test_burst_is_admitted_then_refused_with_exact_retry_after() -> None:
    """A full request bucket admits ``burst`` requests; the next waits exactly 1/rate."""
    limiter, _, clock, alice = make(Limits(rpm=60, tpm=10_000, burst=3))

    async def scenario() -> RateLimitError:
        for _ in range(3):
            await limiter.charge(alice, 1)
        with pytest.raises(RateLimitError) as refused:
            await limiter.charge(alice, 1)
        clock.advance(refused.value.retry_after or 0)
        await limiter.charge(alice, 1)
        return refused.value

    error = run(scenario())
    assert error.status == 429 and error.retry_after == pytest.approx(1.0)
    assert error.headers()["Retry-After"] == "1" and "x-should-retry" not in error.headers()
    assert error.headers()["x-ratelimit-remaining-requests"] == "0"
    assert "requests per min (RPM)" in error.message


def test_tokens_are_reserved_up_front_and_unused_ones_refunded() -> None:
    """Charging prompt + max_tokens blocks overruns; settling refunds what was not used."""
    limiter, storage, _, alice = make(Limits(rpm=100, tpm=600))

    async def scenario() -> tuple[float, float]:
        first = await limiter.charge(alice, 500)
        with pytest.raises(RateLimitError) as refused:
            await limiter.charge(alice, 200)
        await first.settle(150)
        await limiter.charge(alice, 200)
        return refused.value.retry_after or 0, (await storage.peek("alice", alice.limits)).tokens

    wait, tokens_left = run(scenario())
    assert wait == pytest.approx(10.0)  # 100 missing at 10 tokens/s
    assert tokens_left == pytest.approx(600 - 150 - 200)


def test_request_that_can_never_fit_is_not_worth_retrying() -> None:
    """A cost above the TPM is refused with should_retry=False and charges nothing."""
    limiter, storage, _, alice = make(Limits(rpm=10, tpm=1000))

    async def scenario() -> RateLimitError:
        with pytest.raises(RateLimitError) as refused:
            await limiter.charge(alice, 1001)
        return refused.value

    error = run(scenario())
    assert error.should_retry is False and error.headers()["x-should-retry"] == "false"
    assert error.param == "max_tokens" and len(storage) == 0
    assert limiter.in_flight("alice") == 0


def test_concurrency_cap_refuses_and_release_is_idempotent() -> None:
    """Over the cap → 429 concurrency_limit_exceeded; settling twice frees one slot only."""
    limiter, _, _, alice = make(Limits(rpm=100, tpm=10_000, concurrency=2))

    async def scenario() -> str | None:
        first = await limiter.charge(alice, 1)
        second = await limiter.charge(alice, 1)
        with pytest.raises(RateLimitExceededError) as refused:
            await limiter.charge(alice, 1)
        await first.settle(1)
        await first.settle(1)
        assert limiter.in_flight("alice") == 1
        third = await limiter.charge(alice, 1)
        for charge in (second, third):
            await charge.settle(1)
        return refused.value.code

    assert run(scenario()) == "concurrency_limit_exceeded"
    assert limiter.in_flight("alice") == 0


def test_refused_request_holds_no_concurrency_slot() -> None:
    """A request refused by a bucket gives its concurrency slot straight back."""
    limiter, _, _, alice = make(Limits(rpm=60, tpm=100, burst=1, concurrency=5))

    async def scenario() -> None:
        await limiter.charge(alice, 1)
        for _ in range(3):
            with pytest.raises(RateLimitError):
                await limiter.charge(alice, 1)

    run(scenario())
    assert limiter.in_flight("alice") == 1


def test_client_disconnect_is_charged_for_tokens_produced() -> None:
    """A cancelled stream settles in ``finally``: slot freed, unproduced tokens refunded."""
    limiter, storage, _, alice = make(Limits(rpm=100, tpm=1000, concurrency=1))
    produced: list[int] = []

    async def stream(started: asyncio.Event) -> None:
        charge = await limiter.charge(alice, 20 + 500)  # prompt + max_tokens
        try:
            for _ in range(30):
                produced.append(1)
                started.set()
                await asyncio.sleep(0)
            await asyncio.Event().wait()  # the client goes away while we wait for more
        finally:
            await charge.settle(20 + len(produced))

    async def scenario() -> float:
        started = asyncio.Event()
        task = asyncio.create_task(stream(started))
        await started.wait()
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return (await storage.peek("alice", alice.limits)).tokens

    assert run(scenario()) == pytest.approx(1000 - 20 - 30)
    assert limiter.in_flight("alice") == 0


def test_settle_never_charges_more_than_reserved() -> None:
    """Using more than was charged charges nothing extra; negative use counts as 0."""
    limiter, storage, _, alice = make(Limits(rpm=100, tpm=1000))

    async def scenario() -> tuple[float, float]:
        over = await limiter.charge(alice, 100)
        await over.settle(250)
        after_over = (await storage.peek("alice", alice.limits)).tokens
        negative = await limiter.charge(alice, 100)
        await negative.settle(-5)
        return after_over, (await storage.peek("alice", alice.limits)).tokens

    assert run(scenario()) == (pytest.approx(900), pytest.approx(900))


def test_keys_have_separate_buckets() -> None:
    """One key's exhausted bucket does not limit another key."""
    limiter, _, _, alice = make(Limits(rpm=60, tpm=100, burst=1))
    bob = Principal("bob", alice.limits)

    async def scenario() -> None:
        await limiter.charge(alice, 1)
        with pytest.raises(RateLimitError):
            await limiter.charge(alice, 1)
        await limiter.charge(bob, 1)

    run(scenario())


def test_success_headers_follow_openai() -> None:
    """Limits are per minute; remaining is whole; reset is the Go duration until full."""
    limiter, _, _, alice = make(Limits(rpm=60, tpm=600))

    async def scenario() -> Charge:
        return await limiter.charge(alice, 6)

    assert run(scenario()).headers() == {
        "x-ratelimit-limit-requests": "60",
        "x-ratelimit-limit-tokens": "600",
        "x-ratelimit-remaining-requests": "59",
        "x-ratelimit-remaining-tokens": "594",
        "x-ratelimit-reset-requests": "1s",
        "x-ratelimit-reset-tokens": "600ms",
    }


def test_unknown_levels_give_only_the_limit_headers() -> None:
    """With no levels (storage down, failing open) only the limits are stated."""
    headers = rate_limit_headers(Limits(rpm=5, tpm=50), None)
    assert headers == {"x-ratelimit-limit-requests": "5", "x-ratelimit-limit-tokens": "50"}


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.0001, "1ms"),
        (0.12, "120ms"),
        (1, "1s"),
        (8.64, "8.64s"),
        (59.9991, "1m0s"),
        (360, "6m0s"),
        (90.5, "1m30.5s"),
        (3600, "1h0m0s"),
        (-3, "0s"),
    ],
)
def test_format_duration_matches_openai(seconds: float, text: str) -> None:
    """Durations read like OpenAI's reset headers and round up to the millisecond."""
    assert format_duration(seconds) == text


def test_idle_keys_are_swept_without_changing_their_budget() -> None:
    """Keys whose buckets have refilled are dropped; a dropped key reads as full."""
    limiter, storage, clock, alice = make(Limits(rpm=60, tpm=600))

    async def scenario() -> float:
        await limiter.charge(alice, 600)
        clock.advance(61)
        await limiter.charge(Principal("bob", alice.limits), 1)  # triggers the sweep
        return (await storage.peek("alice", alice.limits)).tokens

    assert run(scenario()) == 600
    assert len(storage) == 1  # only bob


def test_info_reports_limits_and_budget_but_no_secret() -> None:
    """/auth/info names the key, tier and budget, and never the key or its digest."""
    settings = AuthSettings(
        enable_auth=True, api_keys=SecretStr("sk-the-secret-key-123"), rate_limit_rpm=30
    )
    principal = KeyStore.from_settings(settings).authenticate("Bearer sk-the-secret-key-123")
    limiter = RateLimiter(MemoryStorage(ManualClock()))

    async def scenario() -> dict[str, Any]:
        await limiter.charge(principal, 100)
        return await limiter.info(principal)

    info = run(scenario())
    assert info["auth_enabled"] is True and info["in_flight"] == 1
    assert info["key"] == {
        "name": principal.name,
        "tier": "standard",
        "priority": 5,
        "admin": False,
        "models": None,
    }
    assert info["limits"]["requests_per_minute"] == 30
    assert info["remaining"]["tokens"] == 100_000 - 100
    text = json.dumps(info)
    assert "sk-the-secret" not in text and "sha" not in text


def test_settings_pick_the_storage() -> None:
    """RATE_LIMIT_STORAGE=memory builds a MemoryStorage, a Redis URL a RedisStorage."""
    assert isinstance(build_storage(AuthSettings()), MemoryStorage)
    redis_settings = AuthSettings(rate_limit_storage=SecretStr("redis://127.0.0.1:1/0"))
    storage = build_storage(redis_settings)
    assert isinstance(storage, RedisStorage)
    run(storage.aclose())


def test_negative_tokens_are_a_programming_error() -> None:
    """The service never charges a negative cost; doing so is a bug, not a 429."""
    limiter, _, _, alice = make(Limits(rpm=1, tpm=1))
    with pytest.raises(ValueError):
        run(limiter.charge(alice, -1))
