"""The pipeline's order and ownership, fast and deterministic: real HTTP through uvicorn, a
scripted engine at the ``EngineClient`` seam (each behaviour here also has a real-engine
test in tests/e2e/test_pipeline_holes.py and tests/e2e/test_ownership.py)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from app.auth.keys import hash_key
from app.config import Settings, load_settings
from app.main import create_app
from app.routing.settings import RoutingSettings
from tests.conftest import make_settings
from tests.support.raw_http import open_unread
from tests.support.scripted_engine import ScriptedEngine
from tests.support.servers import LoopThread, RunningServer, start_server, stop_server

KEY = "sk-scripted-0123456789abcdef01"
AUTH = {"Authorization": f"Bearer {KEY}"}
HELLO = [{"role": "user", "content": "Hi"}]


@contextmanager
def serving(
    loop: LoopThread, engine: ScriptedEngine, settings: Settings | None = None
) -> Iterator[RunningServer]:
    running = start_server(loop, create_app(settings or make_settings(), engine))
    try:
        yield running
    finally:
        stop_server(running)


def keyed(**auth: Any) -> Settings:
    """Auth on with KEY; the admin routes open, for the tests to read what is held."""
    keys = {"enable_auth": True, "api_keys": KEY, "admin_routes_require_key": False}
    return make_settings(auth={**keys, **auth})


def chat(url: str, max_tokens: int = 4, **body: Any) -> httpx.Response:
    headers, timeout = body.pop("headers", AUTH), body.pop("timeout", 30)
    payload = {"model": "tiny-llama", "messages": HELLO, "max_tokens": max_tokens, **body}
    return httpx.post(url + "/v1/chat/completions", json=payload, headers=headers, timeout=timeout)


def wait_for(condition: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.01)


def test_a_refused_key_costs_no_tokenizing(loop_thread: LoopThread) -> None:
    """401 for a bad key and 429 for a key past its RPM are answered before the body is
    parsed or a prompt tokenized: the engine was never asked anything."""
    engine = ScriptedEngine()
    with serving(loop_thread, engine, keyed(rate_limit_rpm=1, rate_limit_burst=1)) as srv:
        assert chat(srv.url, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert chat(srv.url).status_code == 200
        calls_after_first = len(engine.calls)
        assert chat(srv.url).status_code == 429
    assert len(engine.calls) == calls_after_first


def test_tokens_are_charged_before_any_queue_place_or_engine_work(
    loop_thread: LoopThread,
) -> None:
    """A request whose prompt + max_tokens exceeds what is left of the key's TPM is 429
    after tokenizing but before it queues: the engine generates nothing."""
    engine = ScriptedEngine()
    with serving(loop_thread, engine, keyed(rate_limit_tpm=100)) as srv:
        refused = chat(srv.url, max_tokens=95)
        assert refused.status_code == 429, refused.text
        assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert engine.calls_of("encode_chat") and not engine.calls_of("generate")


def test_one_failing_prompt_closes_every_sibling(loop_thread: LoopThread) -> None:
    """Three prompts, the last out of vocabulary: 400, and every engine request of the
    request is closed at once, while the others would have run for 500 slow steps."""
    engine = ScriptedEngine(step_delay_s=0.01)
    body = {"model": "tiny-llama", "prompt": [[1, 2], [3, 4], [5, 999]], "max_tokens": 500}
    with serving(loop_thread, engine) as srv:
        response = httpx.post(srv.url + "/v1/completions", json=body, timeout=30)
        assert response.status_code == 400
        wait_for(lambda: not engine.open_requests, timeout=1.0)


@pytest.mark.parametrize("stream", [False, True])
def test_a_client_gone_mid_request_leaves_nothing_held(
    loop_thread: LoopThread, stream: bool
) -> None:
    """A client that leaves a slow 500-step request after 0.3 s: its engine request is
    closed, its slot and key slot are free, and the next request runs at once."""
    engine = ScriptedEngine(step_delay_s=0.01)
    settings = keyed(rate_limit_concurrency=1)
    settings.resilience.concurrency_limit = 1
    with serving(loop_thread, engine, settings) as srv:
        payload = {"model": "tiny-llama", "messages": HELLO, "max_tokens": 500, "stream": stream}
        if stream:
            with httpx.stream(
                "POST", srv.url + "/v1/chat/completions", json=payload, headers=AUTH
            ) as response:
                lines = response.iter_lines()
                for _ in range(5):
                    next(lines)
        else:
            with pytest.raises(httpx.ReadTimeout):
                chat(srv.url, max_tokens=500, timeout=0.3)
        wait_for(lambda: not engine.open_requests)
        stats = httpx.get(srv.url + "/resilience/stats").json()
        assert stats["queue"]["in_flight"] == 0
        info = httpx.get(srv.url + "/auth/info", headers=AUTH).json()
        assert info["in_flight"] == 0
        assert chat(srv.url).status_code == 200


def test_the_prompt_is_paid_once_the_engine_has_it(loop_thread: LoopThread) -> None:
    """A client gone before the first token (the engine's first step takes 1 s) is charged
    its prompt tokens; the unused completion budget comes back."""
    engine = ScriptedEngine(first_step_delay_s=1.0)
    tpm = 60_000
    with serving(loop_thread, engine, keyed(rate_limit_tpm=tpm)) as srv:
        payload = {"model": "tiny-llama", "prompt": "x" * 200, "max_tokens": 100}
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(srv.url + "/v1/completions", json=payload, headers=AUTH, timeout=0.3)
        wait_for(lambda: not engine.open_requests)
        time.sleep(0.1)
        left = httpx.get(srv.url + "/auth/info", headers=AUTH).json()["remaining"]["tokens"]
    assert tpm - 200 - 1 <= left <= tpm - 200 + tpm / 60 * 2


@pytest.mark.parametrize(("heartbeat", "state"), [(True, "closed"), (False, "open")])
def test_only_a_silent_engine_opens_the_breaker_at_deadlines(
    loop_thread: LoopThread, heartbeat: bool, state: str
) -> None:
    """Requests that pass a 0.5 s REQUEST_TIMEOUT_S: while the engine reports output the
    breaker (2 failures) stays closed; an engine that reports none opens it."""
    engine = ScriptedEngine(step_delay_s=0.05, heartbeat=heartbeat)
    settings = make_settings(resilience={"request_timeout_s": 0.5, "breaker_fail_max": 2})
    with serving(loop_thread, engine, settings) as srv:
        for _ in range(2):
            assert chat(srv.url, max_tokens=100, headers={}).status_code == 504
        stats = httpx.get(srv.url + "/resilience/stats").json()
        breaker = stats["deployments"]["local"]["breaker"]
    assert breaker["state"] == state


def test_a_reader_that_never_reads_is_cut_at_the_deadline(loop_thread: LoopThread) -> None:
    """A fast stream of large chunks to a socket that never reads: the slot is freed at
    REQUEST_TIMEOUT_S (2 s) although the socket stays open."""
    engine = ScriptedEngine(answer=b"x")
    settings = make_settings(resilience={"request_timeout_s": 2.0})
    with serving(loop_thread, engine, settings) as srv:
        payload = {"model": "tiny-llama", "messages": HELLO, "max_tokens": 1000, "stream": True}
        payload |= {"n": 16, "logprobs": True, "top_logprobs": 20}
        started = time.monotonic()
        sock = open_unread(srv.url, "/v1/chat/completions", payload, {})
        try:
            wait_for(lambda: httpx.get(srv.url + "/resilience/stats").json()["queue"]["in_flight"])
            wait_for(
                lambda: not httpx.get(srv.url + "/resilience/stats").json()["queue"]["in_flight"],
                timeout=6,
            )
            assert 1.5 <= time.monotonic() - started < 5
        finally:
            sock.close()


def test_non_streamed_logprobs_past_the_bound_are_refused_before_work(
    loop_thread: LoopThread,
) -> None:
    """MAX_LOGPROBS_ENTRIES bounds what a non-streamed answer accumulates: 400, no engine."""
    engine = ScriptedEngine()
    with serving(loop_thread, engine, make_settings(max_logprobs_entries=100)) as srv:
        response = chat(srv.url, max_tokens=10, logprobs=True, top_logprobs=20, headers={})
        assert response.status_code == 400
        assert "logprob" in response.json()["error"]["message"]
    assert not engine.calls_of("generate")


def test_default_priority_is_the_priority_of_requests_that_name_none(
    loop_thread: LoopThread,
) -> None:
    """DEFAULT_PRIORITY=7: a request without priority reaches the engine at 7; one asking
    for 9 at 9 (it may only lower itself)."""
    engine = ScriptedEngine()
    settings = make_settings(resilience={"default_priority": 7})
    with serving(loop_thread, engine, settings) as srv:
        assert chat(srv.url, headers={}).status_code == 200
        assert chat(srv.url, headers={}, priority=9).status_code == 200
        assert chat(srv.url, headers={"X-Priority": "3"}).status_code == 200
    assert [priority for _, priority, _ in engine.calls_of("generate")] == [7, 9, 7]


def test_log_prompts_and_stream_are_in_the_request_log_line(
    loop_thread: LoopThread, caplog: pytest.LogCaptureFixture
) -> None:
    """LOG_PROMPTS=true adds the prompt and the completion (streamed too) to the request
    line, which also says whether it streamed; by default neither text is logged."""
    engine = ScriptedEngine(answer=b"abc")
    settings = make_settings()
    settings.observability.log_prompts = True
    with caplog.at_level(logging.INFO, logger="gateway.request"):
        with serving(loop_thread, engine, settings) as srv:
            chat(srv.url, max_tokens=3, headers={}, stream=True)
        with serving(loop_thread, engine) as srv:
            chat(srv.url, max_tokens=3, headers={})
    lines = [r for r in caplog.records if getattr(r, "path", "") == "/v1/chat/completions"]
    logged, quiet = lines
    assert logged.stream is True and logged.completion == "abc" and "Hi" in logged.prompt
    assert quiet.stream is False and not hasattr(quiet, "prompt")


def test_no_setting_returns_tracebacks_to_clients(
    loop_thread: LoopThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DEBUG=true in the environment (a generic name other tools set) changes nothing: a
    bug inside the pipeline answers a plain 500 in OpenAI's envelope, no traceback."""
    monkeypatch.setenv("DEBUG", "true")
    monkeypatch.setenv("EMBEDDING_MODEL", "none")  # the scripted engine is the only one
    settings = load_settings()
    engine = ScriptedEngine(fail_encode=RuntimeError("secret internals"))
    with serving(loop_thread, engine, settings) as srv:
        response = chat(srv.url, headers={})
    assert response.status_code == 500
    assert "secret" not in response.text and "Traceback" not in response.text
    assert response.json()["error"]["type"] == "server_error"


def test_metrics_enabled_false_hides_metrics(loop_thread: LoopThread) -> None:
    """METRICS_ENABLED=false: /metrics is 404 on a real app."""
    settings = make_settings()
    settings.observability.metrics_enabled = False
    with serving(loop_thread, ScriptedEngine(), settings) as srv:
        assert httpx.get(srv.url + "/metrics").status_code == 404


def test_a_changed_key_file_takes_effect_without_restart(
    loop_thread: LoopThread, tmp_path: Path
) -> None:
    """API_KEYS_FILE is re-read when it changes: a rotated key works and the old one is
    refused; a broken file leaves the keys in use."""
    path = tmp_path / "keys.yaml"
    old, new = "sk-old-0123456789abcdef0123", "sk-new-0123456789abcdef0123"

    def write(key: str) -> None:
        entry = {"name": "rotating", "sha256": hash_key(key)}
        path.write_text(yaml.safe_dump({"keys": [entry]}), encoding="utf-8")

    write(old)
    settings = make_settings(
        auth={"enable_auth": True, "api_keys_file": path, "api_keys_reload_s": 0.05}
    )
    with serving(loop_thread, ScriptedEngine(), settings) as srv:
        assert chat(srv.url, headers={"Authorization": f"Bearer {old}"}).status_code == 200
        write(new)
        wait_for(lambda: chat(srv.url, headers={"Authorization": f"Bearer {new}"}).is_success)
        assert chat(srv.url, headers={"Authorization": f"Bearer {old}"}).status_code == 401
        path.write_text("keys: [{name: broken}]", encoding="utf-8")
        time.sleep(0.3)
        assert chat(srv.url, headers={"Authorization": f"Bearer {new}"}).status_code == 200


@pytest.mark.parametrize(("readiness", "status"), [("all", 503), ("any", 200)])
def test_readiness_with_one_model_down(
    loop_thread: LoopThread, tmp_path: Path, readiness: str, status: int
) -> None:
    """Two models, one with its only engine down: /readyz fails by default (every model
    must be live); with READINESS=any it stays ready, and the dead model answers 503."""
    document = {
        "models": [
            {"id": "tiny-llama", "deployments": [{"name": "up", "kind": "local"}]},
            {"id": "other", "deployments": [{"name": "down", "kind": "local"}]},
        ]
    }
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    settings = make_settings(readiness=readiness)
    settings.routing = RoutingSettings(models_file=path)
    engines = {"up": ScriptedEngine(), "down": ScriptedEngine(served_name="other", ready=False)}
    running = start_server(loop_thread, create_app(settings, local_engines=engines))
    try:
        assert httpx.get(running.url + "/readyz").status_code == status
        assert chat(running.url, headers={}).status_code == 200
        dead = {"model": "other", "messages": HELLO, "max_tokens": 2}
        response = httpx.post(running.url + "/v1/chat/completions", json=dead, timeout=10)
        assert response.status_code == 503 and "Retry-After" in response.headers
    finally:
        stop_server(running)
