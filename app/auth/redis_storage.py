"""Rate-limit state in Redis, shared by every replica.

Each operation is **one** Lua script call on **one** key, a hash per principal
(``r``: request level, ``t``: token level, ``ts``: server time of the last update in µs),
so the check-and-charge of both buckets is atomic across replicas.

Time comes from Redis's ``TIME`` inside the script, not from the replicas: replicas whose
clocks disagree would otherwise refill one key at different rates (a replica ahead by a
minute would see every bucket full). A server clock that steps back counts as no time.

Keys expire once both buckets would be full again (``PEXPIRE``): a missing key reads as
full, so expiry loses nothing and idle keys cost no memory.

The script is sent with ``EVALSHA`` and re-sent with ``SCRIPT LOAD`` on ``NOSCRIPT`` (after
a Redis restart or ``SCRIPT FLUSH``) by redis-py's ``AsyncScript``.

A charge or refund with an ``op_id`` records its result under a second key for 15 s;
the same operation run again (redis-py retries once when a reply is lost, after the script
may already have run) returns that result and changes nothing. The marker key hashes to the
bucket key's slot (``{bucket key}:op:<id>``), so a cluster keeps both on one node.

A refused connection or a timeout leaves as :class:`StorageUnavailableError` (fail open or
closed, as configured); any other Redis error — an ACL without scripting, ``OOM``, a broken
script — as :class:`StorageFailedError`, which always fails closed.
"""

from __future__ import annotations

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app.auth.buckets import EPSILON, Levels, Limits
from app.auth.storage import ChargeOutcome, StorageFailedError, StorageUnavailableError

_OUTAGES = (RedisConnectionError, RedisTimeoutError, TimeoutError, OSError)
# A retry follows a lost reply within a second; the marker need not outlive that by much.
OP_MARKER_TTL_MS = 15_000

# The maths of buckets.TokenBucket (refill, fits, take, give_back), line for line.
# Numbers go out as strings: Redis turns Lua numbers into integers on return, and into
# 14 significant digits when stored, which would round microsecond timestamps.
BUCKETS_LUA = """
if KEYS[2] then
  local seen = redis.call('GET', KEYS[2])
  if seen then return cjson.decode(seen) end
end
local op = ARGV[1]
local rcap, rrate = tonumber(ARGV[2]), tonumber(ARGV[3])
local tcap, trate = tonumber(ARGV[4]), tonumber(ARGV[5])
local amount, eps = tonumber(ARGV[6]), tonumber(ARGV[7])
local requests = tonumber(ARGV[8])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local saved = redis.call('HMGET', KEYS[1], 'r', 't', 'ts')
local r, t = rcap, tcap
if saved[3] then
  local last = tonumber(saved[3])
  local elapsed = math.max(0, now - last) / 1000000
  r = math.min(rcap, tonumber(saved[1]) + rrate * elapsed)
  t = math.min(tcap, tonumber(saved[2]) + trate * elapsed)
  now = math.max(now, last)
end
local admitted = 0
if op == 'charge' and r + eps >= requests and t + eps >= amount then
  r = math.max(0, r - requests)
  t = math.max(0, t - amount)
  admitted = 1
elseif op == 'refund' then
  t = math.min(tcap, t + amount)
end
if admitted == 1 or op == 'refund' then
  local full_in = math.max((rcap - r) / rrate, (tcap - t) / trate)
  redis.call('HSET', KEYS[1], 'r', string.format('%.17g', r), 't', string.format('%.17g', t),
    'ts', string.format('%.17g', now))
  redis.call('PEXPIRE', KEYS[1], math.ceil(full_in * 1000) + 1000)
end
local result = {admitted, string.format('%.17g', r), string.format('%.17g', t)}
if KEYS[2] then
  redis.call('SET', KEYS[2], cjson.encode(result), 'PX', ARGV[9])
end
return result
"""


class RedisStorage:
    """A :class:`~app.auth.storage.RateLimitStorage` on one Redis (or one cluster slot per key)."""

    def __init__(self, client: Redis, *, prefix: str = "gateway:ratelimit") -> None:
        self.client = client
        self.prefix = prefix
        self._script = client.register_script(BUCKETS_LUA)

    @classmethod
    def from_url(
        cls, url: str, *, timeout_s: float = 0.5, prefix: str = "gateway:ratelimit"
    ) -> RedisStorage:
        """A storage on ``url`` whose calls fail within about ``timeout_s`` when Redis is down."""
        client = Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            # One immediate retry heals a pooled connection that Redis closed (restart, idle
            # timeout). redis-py's default, 10 retries with backoff, would hold every request
            # for seconds while Redis is down, before failing open or closed.
            retry=Retry(NoBackoff(), 1),
        )
        return cls(client, prefix=prefix)

    def key(self, name: str) -> str:
        """The Redis key holding principal ``name``'s buckets."""
        return f"{self.prefix}:{name}"

    def op_key(self, name: str, op_id: str) -> str:
        """The marker of one operation on principal ``name``'s buckets (same cluster slot)."""
        return f"{{{self.key(name)}}}:op:{op_id}"

    async def charge(
        self, key: str, limits: Limits, tokens: int, *, requests: int = 1, op_id: str | None = None
    ) -> ChargeOutcome:
        admitted, levels = await self._run("charge", key, limits, tokens, requests, op_id)
        return ChargeOutcome(admitted, levels)

    async def refund(
        self, key: str, limits: Limits, tokens: int, *, op_id: str | None = None
    ) -> None:
        await self._run("refund", key, limits, tokens, 0, op_id)

    async def peek(self, key: str, limits: Limits) -> Levels:
        return (await self._run("peek", key, limits, 0, 0, None))[1]

    async def aclose(self) -> None:
        await self.client.aclose()

    async def _run(
        self, op: str, key: str, limits: Limits, amount: int, requests: int, op_id: str | None
    ) -> tuple[bool, Levels]:
        bucket_r, bucket_t = limits.requests, limits.tokens
        args: list[str | float] = [op, bucket_r.capacity, bucket_r.refill_per_s]
        args += [bucket_t.capacity, bucket_t.refill_per_s, amount, EPSILON, requests]
        args.append(OP_MARKER_TTL_MS)
        keys = [self.key(key)] + ([self.op_key(key, op_id)] if op_id else [])
        try:
            admitted, level_r, level_t = await self._script(keys=keys, args=args)
        except _OUTAGES as exc:
            # redis-py's messages name host and port, never the URL's password.
            raise StorageUnavailableError(f"redis: {exc}") from exc
        except RedisError as exc:
            raise StorageFailedError(f"redis: {exc}") from exc
        return bool(admitted), Levels(float(level_r), float(level_t))
