"""What a client sees of its rate limits: OpenAI's ``x-ratelimit-*`` headers, the 429 errors
and the ``GET /auth/info`` payload. Nothing here holds a key or a digest.

OpenAI's headers, sent with every response of a rate-limited route::

    x-ratelimit-limit-requests: 60        x-ratelimit-limit-tokens: 100000
    x-ratelimit-remaining-requests: 59    x-ratelimit-remaining-tokens: 99000
    x-ratelimit-reset-requests: 1s        x-ratelimit-reset-tokens: 600ms

``reset`` is the time until the bucket is full again, as a Go duration (``format_duration``).
"""

from __future__ import annotations

import math
from typing import Any

from app.auth.buckets import EPSILON, Levels, Limits
from app.auth.keys import Principal
from app.errors import RateLimitError


def format_duration(seconds: float) -> str:
    """OpenAI's (Go's) duration format, rounded up to the millisecond: ``"120ms"``,
    ``"1s"``, ``"8.64s"``, ``"6m0s"``, ``"1h0m0s"``; ``"0s"`` for nothing."""
    millis = math.ceil(round(max(0.0, seconds) * 1000, 6))
    if millis == 0:
        return "0s"
    if millis < 1000:
        return f"{millis}ms"
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs = f"{rest // 1000}.{rest % 1000:03d}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{hours}h{minutes}m{secs}"
    return f"{minutes}m{secs}" if minutes else secs


def rate_limit_headers(limits: Limits, levels: Levels | None) -> dict[str, str]:
    """OpenAI's ``x-ratelimit-*`` headers for the buckets this key has (an unset limit has
    none); only the ``limit`` pair when levels are unknown (storage down, failing open)."""
    headers: dict[str, str] = {}
    for bucket, limit, level, spec in (
        ("requests", limits.rpm, levels and levels.requests, limits.requests),
        ("tokens", limits.tpm, levels and levels.tokens, limits.tokens),
    ):
        if limit is None:
            continue
        headers[f"x-ratelimit-limit-{bucket}"] = str(limit)
        if levels is not None:
            headers[f"x-ratelimit-remaining-{bucket}"] = str(_whole(level or 0.0))
            headers[f"x-ratelimit-reset-{bucket}"] = format_duration(spec.time_to_full(level or 0))
    return headers


def _whole(level: float) -> int:
    # Same slack as admission: a level a few ulps under 5 still admits 5 tokens.
    return max(0, math.floor(level + EPSILON))


class RateLimitExceededError(RateLimitError):
    """A 429 that also carries the key's ``x-ratelimit-*`` headers."""

    def __init__(
        self, message: str, *, rate_headers: dict[str, str], limit: str, **kwargs: Any
    ) -> None:
        super().__init__(message, **kwargs)
        self.rate_headers = rate_headers
        self.limit = limit  # which limit ran out: requests, tokens or concurrency

    def headers(self) -> dict[str, str]:
        return {**self.rate_headers, **super().headers()}


def concurrency_exceeded(principal: Principal) -> RateLimitExceededError:
    """429 ``concurrency_limit_exceeded``: no retry time, a slot frees when a request ends."""
    cap = principal.limits.concurrency
    return RateLimitExceededError(
        f"Too many concurrent requests for key '{principal.name}': limit {cap}. "
        "Retry when one of them finishes.",
        code="concurrency_limit_exceeded",
        rate_headers=rate_limit_headers(principal.limits, None),
        limit="concurrency",
    )


def _key_info(principal: Principal) -> dict[str, Any]:
    models = sorted(principal.models) if principal.models is not None else None
    return {
        "name": principal.name,
        "tier": principal.tier,
        "priority": principal.priority,
        "admin": principal.is_admin,
        "models": models,
    }


def _remaining(limits: Limits, levels: Levels | None) -> dict[str, Any] | None:
    if levels is None:
        return None
    headers = rate_limit_headers(limits, levels)
    return {
        "requests": _optional_int(headers.get("x-ratelimit-remaining-requests")),
        "tokens": _optional_int(headers.get("x-ratelimit-remaining-tokens")),
        "reset_requests": headers.get("x-ratelimit-reset-requests"),
        "reset_tokens": headers.get("x-ratelimit-reset-tokens"),
    }


def _optional_int(value: str | None) -> int | None:
    return int(value) if value is not None else None


def bucket_exceeded(
    principal: Principal, tokens: int, levels: Levels, requests: int = 1
) -> RateLimitExceededError:
    """429 naming the bucket that runs out (OpenAI's wording), ``retry_after`` exact."""
    limits = principal.limits
    wait_requests = limits.requests.wait_for(levels.requests, requests)
    wait_tokens = limits.tokens.wait_for(levels.tokens, tokens)
    if wait_tokens >= wait_requests:
        which = f"tokens per min (TPM): Limit {limits.tpm}, Remaining {_whole(levels.tokens)}"
        which += f", Requested {tokens}"
    else:
        which = f"requests per min (RPM): Limit {limits.rpm}, Remaining {_whole(levels.requests)}"
    wait = max(wait_requests, wait_tokens)
    return RateLimitExceededError(
        f"Rate limit reached for key '{principal.name}' on {which}. "
        f"Please try again in {format_duration(wait)}.",
        retry_after=wait,
        rate_headers=rate_limit_headers(limits, levels),
        limit="tokens" if wait_tokens >= wait_requests else "requests",
    )


def request_too_large(principal: Principal, tokens: int) -> RateLimitExceededError:
    """429 with ``should_retry=False``: the cost exceeds the whole bucket, so waiting is useless."""
    limits = principal.limits
    return RateLimitExceededError(
        f"Request too large for key '{principal.name}' on tokens per min (TPM): "
        f"Limit {limits.tpm}, Requested {tokens}. Lower max_tokens or shorten the prompt.",
        param="max_tokens",
        should_retry=False,
        rate_headers=rate_limit_headers(limits, None),
        limit="tokens",
    )


def info_payload(principal: Principal, levels: Levels | None, in_flight: int) -> dict[str, Any]:
    """``GET /auth/info``'s body; ``remaining`` is None when the levels are unknown."""
    limits = principal.limits
    return {
        "auth_enabled": principal.auth_enabled,
        "key": _key_info(principal),
        "limits": {
            "requests_per_minute": limits.rpm,
            "tokens_per_minute": limits.tpm,
            "request_burst": int(limits.requests.capacity) if limits.rpm is not None else None,
            "max_concurrent_requests": limits.concurrency,
        },
        "remaining": _remaining(limits, levels),
        "in_flight": in_flight,
    }
