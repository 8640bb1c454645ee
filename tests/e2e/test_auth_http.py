"""API keys and rate limits over real HTTP: a gateway with auth on, served in-process on the
session's real engine, called with the OpenAI SDK and httpx.

Each rate-limit test uses a key of its own (see ``KEYS``), so bucket state never leaks
between tests; the Redis-outage tests start a gateway of their own on a private Redis.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest
import redis
from openai import OpenAI
from openai.types.chat import ChatCompletionMessageParam
from prometheus_client.parser import text_string_to_metric_families

from app.auth.keys import hash_key
from app.engine.manager import EngineManager
from app.main import create_app
from tests.conftest import make_settings
from tests.e2e.conftest import KeyFileWriter
from tests.support.redis_server import RedisServer
from tests.support.servers import LoopThread, RunningServer, start_server, stop_server

PLAIN_KEY = "sk-e2e-plain-0123456789abcdef"
PLAIN_NAME = f"key-{hash_key(PLAIN_KEY)[:8]}"  # the name API_KEYS keys are shown under
KEYS: dict[str, dict[str, Any]] = {
    "admin": {"admin": True},
    "alice": {"tier": "premium"},
    "narrow": {"models": ["some-other-model"]},
    "bursty": {"rpm": 30, "burst": 2},  # 2 at once, then one every 2 s
    "watcher": {"rpm": 6, "tpm": 6000},  # one request per 10 s, 100 tokens per s
    "reader": {"rpm": 6, "tpm": 6000, "burst": 3, "concurrency": 2, "tier": "batch"},
    "frugal": {"tpm": 1000},  # refills 16.7 tokens/s: a refund stands out
    "streamer": {"tpm": 1000},
}
HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Hi"}]
STORY: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Tell me a story"}]
RATE_HEADERS = [
    f"x-ratelimit-{what}-{bucket}"
    for what in ("limit", "remaining", "reset")
    for bucket in ("requests", "tokens")
]
TOKEN_COUNTERS = ("gateway_prompt_tokens", "gateway_completion_tokens")
ADMIN_ROUTES = ["/metrics", "/resilience/stats", "/health/detailed", "/alerts"]


@pytest.fixture(scope="module")
def keys(write_key_file: KeyFileWriter) -> tuple[str, dict[str, str]]:
    """The ``API_KEYS_FILE`` holding ``KEYS``, and their plain secrets."""
    path, plain = write_key_file(KEYS)
    return str(path), plain


@pytest.fixture(scope="module")
def secret(keys: tuple[str, dict[str, str]]) -> dict[str, str]:
    """The plain secret of each key in ``KEYS``, by name."""
    return keys[1]


@pytest.fixture(scope="module")
def auth_server(
    loop_thread: LoopThread, engine: EngineManager, keys: tuple[str, dict[str, str]]
) -> Iterator[RunningServer]:
    """A gateway with auth on (``PLAIN_KEY`` plus the key file), limits in memory."""
    auth = {"enable_auth": True, "api_keys": PLAIN_KEY, "api_keys_file": keys[0]}
    running = start_server(loop_thread, create_app(make_settings(auth=auth), engine))
    yield running
    stop_server(running)


@pytest.fixture
def auth_http(auth_server: RunningServer) -> Iterator[httpx.Client]:
    """A plain httpx client of ``auth_server``; each request sends its own key, if any."""
    with httpx.Client(base_url=auth_server.url, timeout=60) as session:
        yield session


@pytest.fixture
def sdk(auth_server: RunningServer) -> Iterator[Callable[[str], OpenAI]]:
    """OpenAI clients by key, never retrying (a retry would hide the status under test)."""
    clients: list[OpenAI] = []

    def make(key: str) -> OpenAI:
        clients.append(OpenAI(base_url=auth_server.base_url, api_key=key, max_retries=0))
        return clients[-1]

    yield make
    for client in clients:
        client.close()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def error_of(response: Any) -> dict[str, Any]:
    """The OpenAI error envelope's inner object, checking the envelope's shape (an httpx
    response, or the one an SDK exception holds)."""
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def duration_s(text: str) -> float:
    """Seconds in a Go duration as OpenAI sends it: ``"120ms"``, ``"1.5s"``, ``"1m0s"``."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", text)
    assert "".join(n + u for n, u in parts) == text, text
    scale = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    return sum(float(number) * scale[unit] for number, unit in parts)


def counter(http: httpx.Client, admin_key: str, name: str) -> float:
    """The sum of a ``gateway_*`` counter's samples, read from ``/metrics``."""
    text = http.get("/metrics", headers=bearer(admin_key)).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == f"{name}_total"
    )


# --- authentication ---------------------------------------------------------------------


def test_missing_key_is_401_with_bearer_challenge(
    auth_http: httpx.Client, sdk: Callable[[str], OpenAI], model_id: str
) -> None:
    """No Authorization header: 401 ``missing_api_key`` in OpenAI's shape with
    ``WWW-Authenticate: Bearer``, and the SDK raises AuthenticationError."""
    response = auth_http.post("/v1/chat/completions", json={"model": model_id, "messages": HELLO})
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    error = error_of(response)
    assert (error["type"], error["code"]) == ("authentication_error", "missing_api_key")
    with pytest.raises(openai.AuthenticationError) as raised:
        sdk("unused").chat.completions.create(
            model=model_id, messages=HELLO, extra_headers={"Authorization": openai.Omit()}
        )
    assert raised.value.code == "missing_api_key"


def test_wrong_key_is_401(
    auth_http: httpx.Client, sdk: Callable[[str], OpenAI], model_id: str, secret: dict[str, str]
) -> None:
    """An unknown key, or a real key sent with a scheme other than Bearer, is 401
    ``invalid_api_key``/``missing_api_key``; the SDK raises AuthenticationError."""
    with pytest.raises(openai.AuthenticationError) as raised:
        sdk("sk-not-a-key").chat.completions.create(model=model_id, messages=HELLO)
    assert raised.value.status_code == 401
    assert (raised.value.type, raised.value.code) == ("authentication_error", "invalid_api_key")
    assert raised.value.response.headers["www-authenticate"] == "Bearer"
    basic = {"Authorization": f"Basic {secret['alice']}"}
    response = auth_http.get("/v1/models", headers=basic)
    assert response.status_code == 401 and error_of(response)["code"] == "missing_api_key"


def test_good_keys_are_served(
    sdk: Callable[[str], OpenAI], model_id: str, secret: dict[str, str]
) -> None:
    """A key from the key file and a plain ``API_KEYS`` key both get completions."""
    for key in (secret["alice"], PLAIN_KEY):
        reply = sdk(key).chat.completions.create(model=model_id, messages=HELLO, max_tokens=2)
        assert reply.usage is not None and reply.usage.completion_tokens >= 1


def test_key_not_allowed_for_model_is_404(
    auth_http: httpx.Client, sdk: Callable[[str], OpenAI], model_id: str, secret: dict[str, str]
) -> None:
    """A key limited to other models gets 404 ``model_not_found`` for the served model, as
    if it did not exist, and sees an empty model list."""
    client = sdk(secret["narrow"])
    with pytest.raises(openai.NotFoundError) as raised:
        client.chat.completions.create(model=model_id, messages=HELLO, max_tokens=2)
    assert raised.value.code == "model_not_found" and raised.value.param == "model"
    assert [model.id for model in client.models.list()] == []
    response = auth_http.get(f"/v1/models/{model_id}", headers=bearer(secret["narrow"]))
    assert response.status_code == 404 and error_of(response)["code"] == "model_not_found"


@pytest.mark.parametrize("path", ADMIN_ROUTES)
def test_admin_routes_need_an_admin_key(
    auth_http: httpx.Client, path: str, secret: dict[str, str]
) -> None:
    """Admin routes answer 401 without a key, 403 ``admin_key_required`` to a valid
    non-admin key, and 200 to an admin key."""
    missing = auth_http.get(path)
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    assert error_of(missing)["type"] == "authentication_error"
    denied = auth_http.get(path, headers=bearer(secret["alice"]))
    assert denied.status_code == 403
    assert (error_of(denied)["type"], error_of(denied)["code"]) == (
        "permission_error",
        "admin_key_required",
    )
    assert auth_http.get(path, headers=bearer(secret["admin"])).status_code == 200


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
def test_probes_stay_open(auth_http: httpx.Client, path: str) -> None:
    """Liveness and readiness need no key, and a bad key does not make them fail."""
    assert auth_http.get(path).status_code == 200
    assert auth_http.get(path, headers=bearer("sk-not-a-key")).status_code == 200


def test_auth_info_shows_the_caller_and_no_secret(
    auth_http: httpx.Client, sdk: Callable[[str], OpenAI], model_id: str, secret: dict[str, str]
) -> None:
    """``/auth/info`` names the caller's key, tier, limits and remaining budget (one request
    used shows), and its body holds neither the key nor its digest; without a key, 401."""
    sdk(secret["reader"]).chat.completions.create(model=model_id, messages=HELLO, max_tokens=1)
    response = auth_http.get("/auth/info", headers=bearer(secret["reader"]))
    assert response.status_code == 200
    info = response.json()
    assert info["auth_enabled"] is True
    assert info["key"] == {
        "name": "reader",
        "tier": "batch",
        "priority": 9,
        "admin": False,
        "models": None,
    }
    assert info["limits"] == {
        "requests_per_minute": 6,
        "tokens_per_minute": 6000,
        "request_burst": 3,
        "max_concurrent_requests": 2,
    }
    remaining = info["remaining"]
    assert remaining["requests"] == 2 and 0 < duration_s(remaining["reset_requests"]) <= 10
    assert 0 < remaining["tokens"] <= 6000 and duration_s(remaining["reset_tokens"]) < 60
    assert info["in_flight"] == 0
    for key in (secret["reader"], PLAIN_KEY):
        shown = auth_http.get("/auth/info", headers=bearer(key)).text
        assert key not in shown and hash_key(key) not in shown
    plain = auth_http.get("/auth/info", headers=bearer(PLAIN_KEY)).json()
    assert plain["key"]["name"] == PLAIN_NAME and plain["key"]["tier"] == "standard"
    assert auth_http.get("/auth/info").status_code == 401


# --- rate limits ------------------------------------------------------------------------


def test_rate_limit_headers_on_json_and_stream_responses(
    sdk: Callable[[str], OpenAI], model_id: str, secret: dict[str, str]
) -> None:
    """Every 200, streamed or not, carries the six ``x-ratelimit-*`` headers: the limits,
    what is left after this request's charge (1 request, prompt + max_tokens tokens) and
    the time until each bucket is full again."""
    client = sdk(secret["watcher"])
    first = client.chat.completions.with_raw_response.create(
        model=model_id, messages=HELLO, max_tokens=2
    )
    usage = first.parse().usage
    assert usage is not None
    with client.chat.completions.with_streaming_response.create(
        model=model_id, messages=HELLO, max_tokens=2, stream=True
    ) as streamed:
        assert streamed.status_code == 200
        assert list(streamed.parse())
    for headers in (first.headers, streamed.headers):
        assert all(name in headers for name in RATE_HEADERS), dict(headers)
        assert headers["x-ratelimit-limit-requests"] == "6"
        assert headers["x-ratelimit-limit-tokens"] == "6000"
    cost = usage.prompt_tokens + 2
    assert first.headers["x-ratelimit-remaining-requests"] == "5"
    assert first.headers["x-ratelimit-remaining-tokens"] == str(6000 - cost)
    # One request refills in 10 s, ``cost`` tokens in cost / 100 s.
    assert duration_s(first.headers["x-ratelimit-reset-requests"]) == pytest.approx(10, abs=0.01)
    assert duration_s(first.headers["x-ratelimit-reset-tokens"]) == pytest.approx(
        cost / 100, abs=0.01
    )
    assert streamed.headers["x-ratelimit-remaining-requests"] == "4"
    assert 10 < duration_s(streamed.headers["x-ratelimit-reset-requests"]) <= 20


def test_burst_past_rpm_is_429_with_retry_after_then_refills(
    auth_http: httpx.Client, sdk: Callable[[str], OpenAI], model_id: str, secret: dict[str, str]
) -> None:
    """With RPM 30 and a burst of 2, the third request at once is 429 ``rate_limit_exceeded``
    whose ``retry-after-ms`` is the exact refill time (``Retry-After`` its ceiling) and whose
    headers show the empty bucket; just before that time it is still refused, after it a
    request passes, and the next one, streamed, is refused with 429 before any byte."""
    client = sdk(secret["bursty"])
    kwargs: dict[str, Any] = {"model": model_id, "messages": HELLO, "max_tokens": 1}
    for expected_left in (1, 0):
        ok = client.chat.completions.with_raw_response.create(**kwargs)
        assert ok.headers["x-ratelimit-remaining-requests"] == str(expected_left)
        assert ok.headers["x-ratelimit-limit-requests"] == "30"
    with pytest.raises(openai.RateLimitError) as raised:
        client.chat.completions.create(**kwargs)
    error, headers = raised.value, raised.value.response.headers
    assert (error.status_code, error.type, error.code) == (
        429,
        "rate_limit_error",
        "rate_limit_exceeded",
    )
    assert "requests per min (RPM): Limit 30" in error.message
    wait_ms = int(headers["retry-after-ms"])
    assert 0 < wait_ms <= 2000
    assert headers["retry-after"] == str(max(1, math.ceil(wait_ms / 1000)))
    assert headers["x-ratelimit-remaining-requests"] == "0"
    # Full again one token (2 s) after the next one fits.
    assert duration_s(headers["x-ratelimit-reset-requests"]) == pytest.approx(
        wait_ms / 1000 + 2, abs=0.01
    )
    # Half a second early the bucket is still short, by what is left of that wait...
    time.sleep(max(0.0, wait_ms / 1000 - 0.5))
    with pytest.raises(openai.RateLimitError) as early:
        client.chat.completions.create(**kwargs)
    left_ms = int(early.value.response.headers["retry-after-ms"])
    assert 0 < left_ms <= min(wait_ms, 500)
    # ...and waiting exactly what the header says is enough.
    time.sleep(left_ms / 1000)
    assert client.chat.completions.with_raw_response.create(**kwargs).http_response.is_success
    body = {**kwargs, "stream": True}
    with auth_http.stream(
        "POST", "/v1/chat/completions", json=body, headers=bearer(secret["bursty"])
    ) as refused:
        assert refused.status_code == 429
        assert refused.headers["content-type"] == "application/json"
        refused.read()
        assert error_of(refused)["code"] == "rate_limit_exceeded"
        assert int(refused.headers["retry-after-ms"]) > 0


def test_unused_tokens_are_refunded(
    sdk: Callable[[str], OpenAI], model_id: str, secret: dict[str, str]
) -> None:
    """A request is charged prompt + max_tokens up front; when it stops early the unused
    part comes back, as ``x-ratelimit-remaining-tokens`` of the next request shows."""
    # Greedy output is deterministic: its first few tokens, as a stop string, end it early.
    probe = sdk(secret["alice"]).chat.completions.create(
        model=model_id, messages=STORY, max_tokens=4, temperature=0
    )
    stop = probe.choices[0].message.content or None
    assert probe.usage is not None
    prompt, max_tokens, tpm = probe.usage.prompt_tokens, 600, KEYS["frugal"]["tpm"]
    client = sdk(secret["frugal"])
    started = time.monotonic()
    first = client.chat.completions.with_raw_response.create(
        model=model_id, messages=STORY, max_tokens=max_tokens, temperature=0, stop=stop
    )
    usage = first.parse().usage
    assert usage is not None and usage.completion_tokens <= 10, usage
    assert int(first.headers["x-ratelimit-remaining-tokens"]) == tpm - prompt - max_tokens
    second = client.chat.completions.with_raw_response.create(
        model=model_id, messages=STORY, max_tokens=1
    )
    refill = tpm / 60 * (time.monotonic() - started)
    # Net cost of both: what they used, give or take the refill while they ran.
    used = prompt + usage.completion_tokens + prompt + 1
    remaining = int(second.headers["x-ratelimit-remaining-tokens"])
    assert tpm - used - 1 <= remaining <= tpm - used + refill + 1, (remaining, used, refill)


def test_disconnect_mid_stream_charges_only_produced_tokens(
    auth_http: httpx.Client, model_id: str, secret: dict[str, str]
) -> None:
    """A client that leaves a 900-token stream after 50 chunks is charged its prompt and
    the tokens the engine produced before the abort, not its max_tokens."""
    tpm, max_tokens, read = KEYS["streamer"]["tpm"], 900, 50
    admin = secret["admin"]
    before = {name: counter(auth_http, admin, name) for name in TOKEN_COUNTERS}
    body = {"model": model_id, "messages": STORY, "stream": True, "max_tokens": max_tokens}
    body |= {"ignore_eos": True, "temperature": 0}
    started = time.monotonic()
    with auth_http.stream(
        "POST", "/v1/chat/completions", json=body, headers=bearer(secret["streamer"])
    ) as response:
        assert response.status_code == 200
        charged_left = int(response.headers["x-ratelimit-remaining-tokens"])
        # The first event is the role chunk; each later one carries at least one token.
        events = (line for line in response.iter_lines() if line.startswith("data: "))
        for _ in range(read + 1):
            next(events)
    info = wait_for_refund(auth_http, secret["streamer"], above=charged_left + max_tokens // 2)
    refill = tpm / 60 * (time.monotonic() - started)
    prompt, produced = (counter(auth_http, admin, name) - before[name] for name in TOKEN_COUNTERS)
    assert charged_left == tpm - prompt - max_tokens
    assert read <= produced < max_tokens, produced
    remaining = info["remaining"]["tokens"]
    used = prompt + produced
    assert tpm - used - 1 <= remaining <= tpm - used + refill + 1, (remaining, used, refill)
    assert info["in_flight"] == 0


def wait_for_refund(
    http: httpx.Client, key: str, above: float, timeout: float = 10
) -> dict[str, Any]:
    """``/auth/info`` once the key has nothing in flight and more than ``above`` tokens."""
    deadline = time.monotonic() + timeout
    while True:
        info: dict[str, Any] = http.get("/auth/info", headers=bearer(key)).json()
        if info["in_flight"] == 0 and info["remaining"]["tokens"] > above:
            return info
        assert time.monotonic() < deadline, f"no refund: {info}"
        time.sleep(0.05)


# --- Redis outages ----------------------------------------------------------------------


@pytest.fixture
def redis_gateway(
    request: pytest.FixtureRequest,
    loop_thread: LoopThread,
    engine: EngineManager,
    private_redis: RedisServer,
) -> Iterator[RunningServer]:
    """A gateway whose limiter keeps its state in ``private_redis``, failing in the mode the
    test is parametrized with."""
    auth = {"enable_auth": True, "api_keys": PLAIN_KEY, "rate_limit_storage": private_redis.url}
    auth["rate_limit_fail_mode"] = request.param
    running = start_server(loop_thread, create_app(make_settings(auth=auth), engine))
    yield running
    stop_server(running)


@pytest.mark.parametrize("redis_gateway", ["open"], indirect=True)
def test_redis_down_failing_open_still_serves(
    redis_gateway: RunningServer, private_redis: RedisServer, model_id: str
) -> None:
    """With Redis gone and ``RATE_LIMIT_FAIL_MODE=open`` requests still succeed, their
    headers carrying only the limits (``/auth/info`` shows no remaining budget); once Redis
    is back they are charged in it again."""
    client = OpenAI(base_url=redis_gateway.base_url, api_key=PLAIN_KEY, max_retries=0)
    kwargs: dict[str, Any] = {"model": model_id, "messages": HELLO, "max_tokens": 1}
    with client, redis.Redis.from_url(private_redis.url) as store:
        charged = client.chat.completions.with_raw_response.create(**kwargs).headers
        assert "x-ratelimit-remaining-requests" in charged
        assert store.keys("gateway:ratelimit:*") == [f"gateway:ratelimit:{PLAIN_NAME}".encode()]
        private_redis.stop()
        uncharged = client.chat.completions.with_raw_response.create(**kwargs)
        assert uncharged.http_response.status_code == 200
        assert uncharged.headers["x-ratelimit-limit-requests"] == "1000000"
        assert "x-ratelimit-remaining-requests" not in uncharged.headers
        info = httpx.get(redis_gateway.url + "/auth/info", headers=bearer(PLAIN_KEY)).json()
        assert info["key"]["name"] == PLAIN_NAME and info["remaining"] is None
        private_redis.start()
        assert store.keys("gateway:ratelimit:*") == []
        again = client.chat.completions.with_raw_response.create(**kwargs).headers
        assert "x-ratelimit-remaining-requests" in again
        assert store.keys("gateway:ratelimit:*") == [f"gateway:ratelimit:{PLAIN_NAME}".encode()]


@pytest.mark.parametrize("redis_gateway", ["closed"], indirect=True)
def test_redis_down_failing_closed_is_503_with_retry_after(
    redis_gateway: RunningServer, private_redis: RedisServer, model_id: str
) -> None:
    """With Redis gone and ``RATE_LIMIT_FAIL_MODE=closed`` requests get 503
    ``rate_limiter_unavailable`` in OpenAI's shape with ``Retry-After``; probes stay up and
    requests pass again once Redis is back."""
    client = OpenAI(base_url=redis_gateway.base_url, api_key=PLAIN_KEY, max_retries=0)
    kwargs: dict[str, Any] = {"model": model_id, "messages": HELLO, "max_tokens": 1}
    with client, httpx.Client(base_url=redis_gateway.url, timeout=30) as probes:
        assert client.chat.completions.with_raw_response.create(**kwargs).http_response.is_success
        private_redis.stop()
        with pytest.raises(openai.InternalServerError) as raised:
            client.chat.completions.create(**kwargs)
        response = raised.value.response
        assert response.status_code == 503
        assert (response.headers["retry-after"], response.headers["retry-after-ms"]) == (
            "5",
            "5000",
        )
        error = error_of(response)
        assert (error["type"], error["code"]) == ("service_unavailable", "rate_limiter_unavailable")
        assert probes.get("/healthz").status_code == 200
        assert probes.get("/readyz").status_code == 200
        private_redis.start()
        assert client.chat.completions.with_raw_response.create(**kwargs).http_response.is_success
