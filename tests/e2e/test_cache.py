"""The response cache on the real engine, in memory and on a real redis-server: what hits,
what misses, who sees whose entries, replays in both directions validated against OpenAI's
schemas, accounting, expiry, Redis going away, and hits served with the engine down."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.cache.settings import CacheSettings
from app.config import Settings
from app.engine.manager import EngineManager
from app.main import create_app
from tests.conftest import make_settings
from tests.support.process import GatewayProcess
from tests.support.redis_server import RedisServer
from tests.support.servers import LoopThread, RunningServer, start_server, stop_server
from tests.support.spec import validate, validate_completion_chunk

STORY = [{"role": "user", "content": "Tell me a story"}]
CHAT: dict[str, Any] = {"model": "tiny-llama", "messages": STORY, "max_tokens": 12}
CHAT |= {"temperature": 0}
KEYS = "sk-cache-alice-0123456789abcdef,sk-cache-bob-0123456789abcdef0"
ALICE, BOB = (f"Bearer {k}" for k in KEYS.split(","))


def cached(backend: str, **cache: Any) -> Settings:
    settings = make_settings()
    settings.cache = CacheSettings(cache_backend=backend, **cache)
    return settings


@contextmanager
def serving(loop: LoopThread, engine: EngineManager, settings: Settings) -> Iterator[RunningServer]:
    running = start_server(loop, create_app(settings, engine))
    try:
        yield running
    finally:
        stop_server(running)


def post(
    url: str, path: str = "/v1/chat/completions", headers: Any = None, **body: Any
) -> httpx.Response:
    response = httpx.post(url + path, json=body, headers=headers or {}, timeout=60)
    assert response.status_code == 200, response.text
    return response


@pytest.fixture(scope="module")
def memory(loop_thread: LoopThread, engine: EngineManager) -> Iterator[RunningServer]:
    with serving(loop_thread, engine, cached("memory")) as srv:
        yield srv


def test_the_same_request_hits_with_age_and_cached_tokens(memory: RunningServer) -> None:
    """MISS, then HIT with the same answer, an Age, and cached_tokens = the prompt."""
    first = post(memory.url, **{**CHAT, "user": "first-test"})
    second = post(memory.url, **{**CHAT, "user": "first-test"})
    assert first.headers["x-cache"] == "MISS" and second.headers["x-cache"] == "HIT"
    assert int(second.headers["age"]) >= 0
    a, b = first.json(), second.json()
    assert a["choices"] == b["choices"] and a["id"] != b["id"]
    assert b["usage"]["prompt_tokens_details"]["cached_tokens"] == b["usage"]["prompt_tokens"]
    validate("CreateChatCompletionResponse", b)


CHANGES = [
    ("messages", [{"role": "user", "content": "Tell me a joke"}]),
    ("max_tokens", 13),
    ("stop", ["e"]),
    ("seed", 5),
    ("top_p", 0.5),
    ("top_k", 3),
    ("min_p", 0.1),
    ("presence_penalty", 0.5),
    ("frequency_penalty", 0.5),
    ("repetition_penalty", 1.2),
    ("min_tokens", 2),
    ("ignore_eos", True),
    ("logprobs", True),
    ("response_format", {"type": "json_object"}),
]


@pytest.mark.parametrize(("field", "value"), CHANGES, ids=[f for f, _ in CHANGES])
def test_any_one_changed_field_misses(memory: RunningServer, field: str, value: Any) -> None:
    """After an answer is cached, the same request with one field changed misses."""
    base = {**CHAT, "max_tokens": 6}
    post(memory.url, **base)
    assert post(memory.url, **base).headers["x-cache"] == "HIT"
    assert post(memory.url, **{**base, field: value}).headers["x-cache"] == "MISS"


def test_sampled_requests_and_cache_control_bypass(memory: RunningServer) -> None:
    """Sampling without a seed is never cached; no-cache skips the lookup; no-store skips
    storing."""
    sampled = {**CHAT, "temperature": 1.0}
    assert post(memory.url, **sampled).headers["x-cache"] == "BYPASS"
    assert post(memory.url, **sampled).headers["x-cache"] == "BYPASS"
    fresh = {**CHAT, "max_tokens": 9}
    assert (
        post(memory.url, headers={"Cache-Control": "no-store"}, **fresh).headers["x-cache"]
        == "MISS"
    )
    assert post(memory.url, **fresh).headers["x-cache"] == "MISS"  # nothing was stored
    assert post(memory.url, **fresh).headers["x-cache"] == "HIT"
    assert (
        post(memory.url, headers={"Cache-Control": "no-cache"}, **fresh).headers["x-cache"]
        == "BYPASS"
    )


def _stream(url: str, **body: Any) -> tuple[httpx.Response, list[Any]]:
    response = httpx.post(url + "/v1/chat/completions", json={**body, "stream": True}, timeout=60)
    data = [line[6:] for line in response.text.split("\n") if line.startswith("data: ")]
    assert data[-1] == "[DONE]" and data.count("[DONE]") == 1
    return response, [json.loads(item) for item in data[:-1]]


def _text(chunks: list[Any]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


def test_streamed_and_plain_answers_replay_as_each_other(memory: RunningServer) -> None:
    """Produced streamed, served plain; produced plain, served streamed (role chunk, content,
    finish, usage when asked, [DONE]): the same text, valid against OpenAI's schemas."""
    one = {**CHAT, "max_tokens": 10, "user": "replay-1"}
    produced, chunks = _stream(memory.url, **one, stream_options={"include_usage": True})
    assert produced.headers["x-cache"] == "MISS"
    plain = post(memory.url, **one)
    assert plain.headers["x-cache"] == "HIT"
    assert plain.json()["choices"][0]["message"]["content"] == _text(chunks)
    validate("CreateChatCompletionResponse", plain.json())

    two = {**CHAT, "max_tokens": 11, "user": "replay-2"}
    original = post(memory.url, **two).json()["choices"][0]["message"]["content"]
    replayed, chunks = _stream(memory.url, **two, stream_options={"include_usage": True})
    assert replayed.headers["x-cache"] == "HIT" and _text(chunks) == original
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["usage"]["prompt_tokens_details"]["cached_tokens"] > 0
    for chunk in chunks:
        validate("CreateChatCompletionStreamResponse", chunk)


def test_completions_replay_streamed(memory: RunningServer) -> None:
    body = {"model": "tiny-llama", "prompt": "Once upon a time", "max_tokens": 8, "temperature": 0}
    text = post(memory.url, "/v1/completions", **body).json()["choices"][0]["text"]
    response = httpx.post(memory.url + "/v1/completions", json={**body, "stream": True}, timeout=60)
    assert response.headers["x-cache"] == "HIT"
    chunks = [
        json.loads(line[6:]) for line in response.text.split("\n") if line.startswith("data: {")
    ]
    assert "".join(c["choices"][0]["text"] for c in chunks) == text
    for chunk in chunks:
        validate_completion_chunk(chunk)


def test_a_stream_cut_short_is_not_stored(memory: RunningServer) -> None:
    """A client that leaves mid-stream stores nothing: the next identical request misses."""
    body = {**CHAT, "max_tokens": 400, "ignore_eos": True, "stream": True, "user": "cut"}
    with httpx.stream("POST", memory.url + "/v1/chat/completions", json=body, timeout=60) as r:
        lines = r.iter_lines()
        for _ in range(3):
            next(lines)
    time.sleep(0.5)
    assert post(memory.url, **{**body, "stream": False}).headers["x-cache"] == "MISS"


def test_keys_do_not_share_entries_unless_the_scope_is_global(
    loop_thread: LoopThread, engine: EngineManager
) -> None:
    auth = {"enable_auth": True, "api_keys": KEYS}
    for scope, bob_sees in (("key", "MISS"), ("global", "HIT")):
        settings = cached("memory", cache_scope=scope)
        settings.auth = make_settings(auth=auth).auth
        with serving(loop_thread, engine, settings) as srv:
            post(srv.url, headers={"Authorization": ALICE}, **CHAT)
            assert (
                post(srv.url, headers={"Authorization": ALICE}, **CHAT).headers["x-cache"] == "HIT"
            )
            assert (
                post(srv.url, headers={"Authorization": BOB}, **CHAT).headers["x-cache"] == bob_sees
            )


@pytest.mark.parametrize(("charge", "pays_tokens"), [("requests", False), ("tokens", True)])
def test_a_hit_costs_one_request_and_its_tokens_only_if_configured(
    loop_thread: LoopThread, engine: EngineManager, charge: str, pays_tokens: bool
) -> None:
    """CACHE_HIT_CHARGE=requests: a hit takes one request of the key's RPM and no TPM;
    =tokens: its tokens too (6 RPM and 6000 TPM, so a refill cannot hide either)."""
    auth = {"enable_auth": True, "api_keys": KEYS, "rate_limit_rpm": 6, "rate_limit_tpm": 6000}
    settings = cached("memory", cache_hit_charge=charge)
    settings.auth = make_settings(auth=auth).auth
    with serving(loop_thread, engine, settings) as srv:
        headers = {"Authorization": ALICE}
        post(srv.url, headers=headers, **CHAT)
        before = httpx.get(srv.url + "/auth/info", headers=headers).json()["remaining"]
        hit = post(srv.url, headers=headers, **CHAT)
        after = httpx.get(srv.url + "/auth/info", headers=headers).json()["remaining"]
    assert hit.headers["x-cache"] == "HIT"
    assert before["requests"] - after["requests"] == 1
    spent, total = before["tokens"] - after["tokens"], hit.json()["usage"]["total_tokens"]
    assert (total - 30 <= spent <= total) if pays_tokens else spent <= 0


def test_entries_expire(loop_thread: LoopThread, engine: EngineManager) -> None:
    with serving(loop_thread, engine, cached("memory", cache_ttl_s=1)) as srv:
        post(srv.url, **CHAT)
        assert post(srv.url, **CHAT).headers["x-cache"] == "HIT"
        time.sleep(1.2)
        assert post(srv.url, **CHAT).headers["x-cache"] == "MISS"


def test_redis_shares_entries_and_its_loss_only_bypasses(
    loop_thread: LoopThread, engine: EngineManager, private_redis: RedisServer
) -> None:
    """Two gateways on one Redis share entries; with Redis killed, requests are still served
    (BYPASS); once it is back, they are cached again."""
    settings = cached(private_redis.url)
    with (
        serving(loop_thread, engine, settings) as one,
        serving(loop_thread, engine, settings) as two,
    ):
        post(one.url, **CHAT)
        assert post(two.url, **CHAT).headers["x-cache"] == "HIT"
        private_redis.stop()
        down = post(one.url, **{**CHAT, "max_tokens": 5})
        assert down.headers["x-cache"] == "BYPASS"
        health = httpx.get(one.url + "/health/detailed").json()["components"]["cache"]
        assert health["status"] == "degraded" and health["last_error"]
        private_redis.start()
        post(one.url, **{**CHAT, "max_tokens": 5})
        assert post(two.url, **{**CHAT, "max_tokens": 5}).headers["x-cache"] == "HIT"


def test_a_hit_is_served_while_the_engine_is_down(tmp_path: Path) -> None:
    """A gateway process whose engine core is killed: while it restarts, a cached request
    is answered (HIT) and an uncached one gets 503 with Retry-After."""
    gateway = GatewayProcess(tmp_path, {"CACHE_BACKEND": "memory"}, name="cache").start()
    try:
        post(gateway.url, **CHAT)
        gateway.engine_core().send_signal(signal.SIGKILL)
        started = time.monotonic()
        while httpx.get(gateway.url + "/readyz").status_code == 200:
            assert time.monotonic() - started < 10
            time.sleep(0.1)
        hit = httpx.post(gateway.url + "/v1/chat/completions", json=CHAT, timeout=30)
        assert hit.status_code == 200 and hit.headers["x-cache"] == "HIT"
        miss = httpx.post(gateway.url + "/v1/chat/completions", json={**CHAT, "max_tokens": 3})
        assert miss.status_code == 503 and "retry-after" in miss.headers
        health = httpx.get(gateway.url + "/health/detailed").json()["components"]["cache"]
        assert health["serves_while_engines_are_down"] is True
    finally:
        gateway.stop()
