"""RedisStorage on a real redis-server: one limit across replicas, the Lua maths, expiry,
EVALSHA fallback, and failing open or closed when Redis goes away."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
import redis

from app.auth.buckets import Limits
from app.auth.keys import Principal
from app.auth.ratelimit import RateLimiter
from app.auth.redis_storage import RedisStorage
from app.auth.storage import StorageUnavailableError
from app.errors import RateLimitError, ServiceUnavailableError
from tests.support.redis_server import RedisServer, free_port
from tests.support.tcp_proxy import ReplyDroppingProxy


def replica(url: str, **options: object) -> RateLimiter:
    """A limiter with its own Redis client, as one gateway replica would have."""
    return RateLimiter(RedisStorage.from_url(url), **options)  # type: ignore[arg-type]


async def burst(limiters: list[RateLimiter], principal: Principal, n: int, tokens: int) -> int:
    """Fire ``n`` charges at once, spread over ``limiters``; return how many were admitted."""

    async def one(limiter: RateLimiter) -> bool:
        try:
            await limiter.charge(principal, tokens)
        except RateLimitError:
            return False
        return True

    results = await asyncio.gather(*(one(limiters[i % len(limiters)]) for i in range(n)))
    return sum(results)


def test_two_replicas_enforce_one_request_limit(redis_url: str) -> None:
    """Two limiters on one Redis admit exactly the key's burst in a concurrent rush."""
    alice = Principal("alice", Limits(rpm=1, tpm=100_000, burst=10, concurrency=None))

    async def scenario() -> int:
        limiters = [replica(redis_url), replica(redis_url)]
        admitted = await burst(limiters, alice, 60, 1)
        for limiter in limiters:
            await limiter.aclose()
        return admitted

    assert asyncio.run(scenario()) == 10


def test_two_replicas_enforce_one_token_limit(redis_url: str) -> None:
    """Token reservations from both replicas share one bucket: 10 x 100 of 1000 tokens."""
    alice = Principal("alice", Limits(rpm=1000, tpm=1000, concurrency=None))

    async def scenario() -> int:
        limiters = [replica(redis_url), replica(redis_url)]
        admitted = await burst(limiters, alice, 40, 100)
        for limiter in limiters:
            await limiter.aclose()
        return admitted

    # 1000 tokens, plus at most a few refilled (16.7/s) during the burst: never an 11th.
    assert asyncio.run(scenario()) == 10


def test_lua_maths_matches_the_bucket_maths(redis_url: str) -> None:
    """Charge, refusal with its exact wait, and refund agree with buckets.py."""
    limits = Limits(rpm=60, tpm=600, burst=2)
    storage = RedisStorage.from_url(redis_url)

    async def scenario() -> None:
        first = await storage.charge("k", limits, 500)
        assert first.admitted and first.levels.tokens == pytest.approx(100, abs=0.5)
        refused = await storage.charge("k", limits, 200)
        assert not refused.admitted
        wait = limits.tokens.wait_for(refused.levels.tokens, 200)
        assert 9.9 < wait <= 10.0  # 100 missing at 10 tokens/s
        await storage.refund("k", limits, 300)
        levels = await storage.peek("k", limits)
        assert levels.tokens == pytest.approx(400, abs=0.5)
        assert levels.requests == pytest.approx(1, abs=0.01)
        await storage.aclose()

    asyncio.run(scenario())


def test_refused_request_gets_retry_after_from_server_time(redis_url: str) -> None:
    """An empty request bucket answers 429 with the wait until the next request (≤ 1/rate)."""
    alice = Principal("alice", Limits(rpm=600, tpm=100_000, burst=1))

    async def scenario() -> float:
        limiter = replica(redis_url)
        await limiter.charge(alice, 1)
        with pytest.raises(RateLimitError) as refused:
            await limiter.charge(alice, 1)
        wait = refused.value.retry_after or 0
        await asyncio.sleep(wait)
        await limiter.charge(alice, 1)  # waiting retry_after is enough
        await limiter.aclose()
        return wait

    assert 0 < asyncio.run(scenario()) <= 0.1


def test_keys_expire_once_buckets_would_be_full(redis_url: str) -> None:
    """A charged key expires when its buckets refill; a peek writes nothing."""
    limits = Limits(rpm=60, tpm=600)
    storage = RedisStorage.from_url(redis_url)

    async def scenario() -> None:
        await storage.peek("idle", limits)
        await storage.charge("busy", limits, 60)  # 6 s of tokens, 1 s of requests
        await storage.aclose()

    asyncio.run(scenario())
    with redis.Redis.from_url(redis_url) as client:
        assert client.exists(storage.key("idle")) == 0
        assert 6000 < client.pttl(storage.key("busy")) <= 7000


def test_script_is_reloaded_after_script_flush(redis_url: str) -> None:
    """EVALSHA falls back to loading the script when Redis has forgotten it."""
    limits = Limits(rpm=60, tpm=600)
    storage = RedisStorage.from_url(redis_url)

    async def scenario() -> bool:
        await storage.charge("k", limits, 1)
        await storage.client.script_flush()
        outcome = await storage.charge("k", limits, 1)
        await storage.aclose()
        return outcome.admitted

    assert asyncio.run(scenario())


def test_fail_open_admits_uncharged_and_reports(
    private_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis down + fail open: requests pass, each failure is reported, one warning logged;
    once Redis is back, requests are charged again."""
    alice = Principal("alice", Limits(rpm=60, tpm=1000, concurrency=2))
    failures: list[tuple[str, Exception]] = []

    async def scenario() -> None:
        limiter = replica(
            private_redis.url, on_storage_error=lambda op, exc, _: failures.append((op, exc))
        )
        private_redis.stop()
        for _ in range(2):
            charge = await limiter.charge(alice, 100)
            assert not charge.charged and "x-ratelimit-remaining-tokens" not in charge.headers()
            await charge.settle(10)
        private_redis.start()
        charge = await limiter.charge(alice, 100)
        assert charge.charged and charge.headers()["x-ratelimit-remaining-tokens"] == "900"
        await charge.settle(100)
        await limiter.aclose()

    with caplog.at_level(logging.WARNING, logger="app.auth.ratelimit"):
        asyncio.run(scenario())
    assert [operation for operation, _ in failures] == ["charge", "charge"]
    assert all(isinstance(error, StorageUnavailableError) for _, error in failures)
    assert len([r for r in caplog.records if "failing open" in r.getMessage()]) == 1


def test_fail_closed_answers_503_and_frees_the_slot(private_redis: RedisServer) -> None:
    """Redis down + fail closed: 503 rate_limiter_unavailable with Retry-After; no slot kept."""
    alice = Principal("alice", Limits(rpm=60, tpm=1000, concurrency=1))

    async def scenario() -> ServiceUnavailableError:
        limiter = replica(private_redis.url, fail_mode="closed", unavailable_retry_after_s=3.0)
        private_redis.stop()
        with pytest.raises(ServiceUnavailableError) as refused:
            await limiter.charge(alice, 10)
        assert limiter.in_flight("alice") == 0
        await limiter.aclose()
        return refused.value

    error = asyncio.run(scenario())
    assert error.status == 503 and error.code == "rate_limiter_unavailable"
    assert error.headers()["Retry-After"] == "3"


def test_refund_during_outage_is_reported_not_raised(private_redis: RedisServer) -> None:
    """Settling while Redis is down frees the slot, reports the lost refund, raises nothing."""
    alice = Principal("alice", Limits(rpm=60, tpm=1000, concurrency=1))
    failures: list[str] = []

    async def scenario() -> None:
        limiter = replica(private_redis.url, on_storage_error=lambda op, _, __: failures.append(op))
        charge = await limiter.charge(alice, 500)
        private_redis.stop()
        await charge.settle(0)
        assert limiter.in_flight("alice") == 0
        await limiter.aclose()

    asyncio.run(scenario())
    assert failures == ["refund"]


def test_unreachable_redis_fails_fast() -> None:
    """With nothing listening, a call fails within a second instead of retrying for long."""
    storage = RedisStorage.from_url(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.5)

    async def scenario() -> float:
        started = time.monotonic()
        with pytest.raises(StorageUnavailableError):
            await storage.charge("k", Limits(rpm=1, tpm=1), 1)
        await storage.aclose()
        return time.monotonic() - started

    assert asyncio.run(scenario()) < 1.0


def test_info_shows_no_budget_while_redis_is_down(private_redis: RedisServer) -> None:
    """/auth/info still answers during an outage, with ``remaining`` unknown."""
    alice = Principal("alice", Limits(rpm=60, tpm=1000))

    async def scenario() -> object:
        limiter = replica(private_redis.url)
        private_redis.stop()
        info = await limiter.info(alice)
        await limiter.aclose()
        return info["remaining"]

    assert asyncio.run(scenario()) is None


def test_errors_other_than_an_outage_fail_closed(redis_url: str) -> None:
    """A Redis that answers but refuses the script (an ACL without scripting: NOPERM) is a
    misconfiguration, not an outage: even in fail-open mode the request is refused with 503
    ``rate_limiter_failed`` instead of being admitted uncharged."""
    alice = Principal("alice", Limits(rpm=60, tpm=1000))
    with redis.Redis.from_url(redis_url) as admin:
        admin.execute_command(
            "ACL", "SETUSER", "noscript", "on", ">pw", "~*", "+@all", "-@scripting"
        )
    url = redis_url.replace("redis://", "redis://noscript:pw@")

    async def scenario() -> ServiceUnavailableError:
        limiter = replica(url, fail_mode="open")
        with pytest.raises(ServiceUnavailableError) as refused:
            await limiter.charge(alice, 10)
        assert limiter.in_flight("alice") == 0
        await limiter.aclose()
        return refused.value

    try:
        error = asyncio.run(scenario())
    finally:
        with redis.Redis.from_url(redis_url) as admin:
            admin.execute_command("ACL", "DELUSER", "noscript")
    assert error.status == 503 and error.code == "rate_limiter_failed"


def test_a_retried_charge_or_refund_applies_once(redis_server: RedisServer, redis_url: str) -> None:
    """The reply to a charge is lost (the proxy drops it and the connection): redis-py's one
    retry runs the script again, which recognises the operation and applies nothing twice.
    The same for a refund."""
    limits = Limits(rpm=60, tpm=1000)
    proxy = ReplyDroppingProxy(redis_server.port)
    storage = RedisStorage.from_url(f"redis://127.0.0.1:{proxy.port}/0")
    key = storage.key("k")

    async def scenario() -> tuple[float, float]:
        try:
            await storage.peek("warm-up", limits)  # the script is loaded: EVALSHA from now on
            proxy.drop_next_reply()
            taken = await storage.charge("k", limits, 300, op_id="charge-1")
            assert taken.admitted and proxy.dropped == 1
            after_charge = float(direct.hget(key, "t") or 0)
            proxy.drop_next_reply()
            await storage.refund("k", limits, 200, op_id="refund-1")
            assert proxy.dropped == 2
            return after_charge, float(direct.hget(key, "t") or 0)
        finally:
            await storage.aclose()

    with redis.Redis.from_url(redis_url) as direct:
        try:
            after_charge, after_refund = asyncio.run(scenario())
        finally:
            proxy.close()
    assert after_charge == pytest.approx(700, abs=2)  # once, not 400
    assert after_refund == pytest.approx(900, abs=2)  # once, not 1000 (capped) or 1100
