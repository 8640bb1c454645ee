"""The holes a hostile or careless client found in how the pipeline was wired (issue 11),
each shown closed against the real engine over real HTTP.

Each test serves an app of its own on the session's engine, so queues, breakers and
buckets never leak between tests.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import orjson
import pytest

from app.auth.settings import AuthSettings
from app.config import ServerSettings, Settings
from app.embeddings.settings import EmbeddingSettings
from app.engine.faults import FaultInjectingEngine, FaultPlan
from app.engine.manager import EngineManager
from app.engine.settings import EngineSettings
from app.main import create_app
from app.observability.settings import ObservabilitySettings
from tests.conftest import make_settings
from tests.support.raw_http import send_part_of_body
from tests.support.servers import LoopThread, RunningServer, start_server, stop_server
from tests.support.spec import validate

STORY = [{"role": "user", "content": "Tell me a story"}]
LONG = {"max_tokens": 900, "ignore_eos": True, "temperature": 0}
KEY = "sk-holes-0123456789abcdef0123"


@contextmanager
def serving(loop: LoopThread, engine: Any, settings: Settings) -> Iterator[RunningServer]:
    running = start_server(loop, create_app(settings, engine))
    try:
        yield running
    finally:
        stop_server(running)


def wait_idle(engine: EngineManager, timeout: float) -> float:
    """Seconds until the engine runs nothing; fails after ``timeout``."""
    started = time.monotonic()
    while engine.num_unfinished_requests():
        assert time.monotonic() - started < timeout, engine.num_unfinished_requests()
        time.sleep(0.01)
    return time.monotonic() - started


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    validate("ErrorResponse", body)
    return dict(body["error"])


# -- orphaned engine work --------------------------------------------------------------------


def test_a_failing_prompt_aborts_its_sibling_prompts(
    loop_thread: LoopThread, engine: EngineManager, model_id: str
) -> None:
    """A non-streaming completion of three prompts whose last holds an out-of-vocabulary
    token id answers 400, and the two valid prompts stop generating with it: the engine
    is idle within a second, not after their 900 tokens."""
    body = {"model": model_id, "prompt": [[11, 12, 13], [14, 15], [16, 999_999]], **LONG}
    with serving(loop_thread, engine, make_settings()) as srv:
        response = httpx.post(srv.url + "/v1/completions", json=body, timeout=60)
        error_of(response, 400)
        idle_after = wait_idle(engine, timeout=5)
    print(f"\nsibling prompts: engine idle {idle_after:.2f}s after the 400")
    assert idle_after < 1.0


# -- work before the charge, on the event loop --------------------------------------------------


def test_a_flood_of_messages_is_refused_without_freezing_the_event_loop(
    loop_thread: LoopThread, engine: EngineManager, model_id: str
) -> None:
    """~120k empty messages inside a 4 MiB body get 400 naming ``messages`` (MAX_MESSAGES),
    and ``/healthz`` keeps answering within half a second meanwhile."""
    messages = [{"role": "user", "content": ""}] * 120_000
    payload = orjson.dumps({"model": model_id, "messages": messages, "max_tokens": 1})
    settings = make_settings(max_body_bytes=4 * 1024 * 1024)
    worst = 0.0
    done = threading.Event()

    def probe(url: str) -> None:
        nonlocal worst
        with httpx.Client(base_url=url, timeout=30) as client:
            while not done.is_set():
                started = time.monotonic()
                assert client.get("/healthz").status_code == 200
                worst = max(worst, time.monotonic() - started)
                time.sleep(0.01)

    with serving(loop_thread, engine, settings) as srv:
        prober = threading.Thread(target=probe, args=(srv.url,))
        prober.start()
        time.sleep(0.1)
        try:
            response = httpx.post(
                srv.url + "/v1/chat/completions",
                content=payload,
                headers={"content-type": "application/json"},
                timeout=60,
            )
        finally:
            time.sleep(0.1)
            done.set()
            prober.join()
    assert error_of(response, 400)["param"] == "messages"
    print(f"\nmessage flood: worst /healthz {worst * 1000:.0f} ms while it was refused")
    assert worst < 0.5, f"/healthz took {worst:.2f}s during the flood"


@pytest.fixture(scope="module")
def guarded(loop_thread: LoopThread, engine: EngineManager) -> Iterator[RunningServer]:
    """Auth on with one key allowed a single request per minute, 4 MiB bodies."""
    auth = {"enable_auth": True, "api_keys": KEY, "rate_limit_rpm": 1, "rate_limit_burst": 1}
    settings = make_settings(auth=auth, max_body_bytes=4 * 1024 * 1024)
    with serving(loop_thread, engine, settings) as srv:
        yield srv


def test_an_unauthenticated_request_is_refused_before_its_body_arrives(
    guarded: RunningServer,
) -> None:
    """A request without a key that declares a 4 MB body and sends 100 bytes of it is
    answered 401 at once: the gateway does not wait for, read or parse the body."""
    response = send_part_of_body(
        guarded.url, "/v1/chat/completions", 4_000_000, b"{" + b" " * 99, {}, timeout=3
    )
    assert response.status == 401
    assert orjson.loads(response.body)["error"]["code"] == "missing_api_key"


def test_an_exhausted_key_is_refused_before_its_body_arrives(
    guarded: RunningServer, model_id: str
) -> None:
    """Once the key's one request a minute is spent, the next one is 429 before its body
    is read: a key over its limit buys no parsing or tokenizing."""
    headers = {"Authorization": f"Bearer {KEY}"}
    body = {"model": model_id, "prompt": "Hi", "max_tokens": 1}
    first = httpx.post(guarded.url + "/v1/completions", json=body, headers=headers, timeout=30)
    assert first.status_code == 200, first.text
    response = send_part_of_body(
        guarded.url, "/v1/completions", 4_000_000, b"{" + b" " * 99, headers, timeout=3
    )
    assert response.status == 429
    assert "retry-after" in response.head.lower()


# -- unbounded memory ------------------------------------------------------------------------


def test_non_streaming_logprobs_are_bounded_streaming_ones_are_not(
    loop_thread: LoopThread, engine: EngineManager, model_id: str
) -> None:
    """With MAX_LOGPROBS_ENTRIES=1000, a non-streaming chat asking 100 tokens x (20 + 1)
    logprobs is 400 before any work; the same request streamed (formatted as it goes,
    nothing accumulated) is served."""
    body = {"model": model_id, "messages": STORY, "max_tokens": 100, "logprobs": True}
    body |= {"top_logprobs": 20, "ignore_eos": True}
    with serving(loop_thread, engine, make_settings(max_logprobs_entries=1000)) as srv:
        refused = httpx.post(srv.url + "/v1/chat/completions", json=body, timeout=60)
        assert error_of(refused, 400)["param"] in ("max_tokens", "top_logprobs")
        streamed = httpx.post(
            srv.url + "/v1/chat/completions", json={**body, "stream": True}, timeout=60
        )
        assert streamed.status_code == 200 and streamed.text.endswith("data: [DONE]\n\n")


# -- the breaker, and what a hung-up client pays ------------------------------------------------


def test_deadlines_of_a_progressing_engine_do_not_open_the_breaker(
    loop_thread: LoopThread, engine: EngineManager, model_id: str
) -> None:
    """Three 1000-token requests that pass a 0.4 s REQUEST_TIMEOUT_S while the engine keeps
    producing tokens each get 504, yet the breaker (opening after 2 failures) stays closed
    and the next request is served."""
    settings = make_settings(resilience={"request_timeout_s": 0.4, "breaker_fail_max": 2})
    body = {"model": model_id, "messages": STORY, **LONG, "max_tokens": 1000}
    with serving(loop_thread, engine, settings) as srv:
        for _ in range(3):
            response = httpx.post(srv.url + "/v1/chat/completions", json=body, timeout=60)
            error_of(response, 504)
        breaker = httpx.get(srv.url + "/resilience/stats").json()["deployments"]["local"]["breaker"]
        assert breaker["state"] == "closed", breaker
        small = {**body, "max_tokens": 4}
        assert httpx.post(srv.url + "/v1/chat/completions", json=small).status_code == 200


def test_prompt_tokens_are_charged_when_the_client_leaves_before_the_first_token(
    loop_thread: LoopThread, engine: EngineManager, model_id: str
) -> None:
    """A client admitted to the engine that hangs up before its first token pays for its
    prompt (prefill is work); only the completion it never got is refunded. The engine's
    first step is held back by the fault seam, so the client leaves mid-prefill."""
    tpm = 60_000
    auth = {"enable_auth": True, "api_keys": KEY, "rate_limit_tpm": tpm}
    stalling = FaultInjectingEngine(engine, FaultPlan(stall_requests=1, stall_s=2))
    prompt = "word " * 200
    with serving(loop_thread, stalling, make_settings(auth=auth)) as srv:
        headers = {"Authorization": f"Bearer {KEY}"}
        body = {"model": model_id, "prompt": prompt, "max_tokens": 500}
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(srv.url + "/v1/completions", json=body, headers=headers, timeout=0.5)
        prompt_tokens = len(engine.encode_prompt(prompt))
        time.sleep(2.5)  # the stall ends; the refund lands
        info = httpx.get(srv.url + "/auth/info", headers=headers).json()
    refill = tpm / 60 * 3.5
    assert info["in_flight"] == 0
    assert tpm - prompt_tokens - 1 <= info["remaining"]["tokens"] <= tpm - prompt_tokens + refill


# -- limits nobody asked for -------------------------------------------------------------------


def test_without_keys_no_rate_limit_applies_unless_configured(
    loop_thread: LoopThread, engine: EngineManager, model_id: str
) -> None:
    """Auth off and no RATE_LIMIT_* set: 90 requests in a burst are all served (the old
    anonymous bucket refused past 60) and carry no x-ratelimit headers; admission control
    still stands in front of the engine."""
    settings = Settings(
        server=ServerSettings(),
        engine=EngineSettings(max_model_len=1024),
        auth=AuthSettings(),
        observability=ObservabilitySettings(log_json=False),
        embedding=EmbeddingSettings(embedding_model="none"),
    )
    body = {"model": model_id, "prompt": "Hi", "max_tokens": 1}
    with serving(loop_thread, engine, settings) as srv, httpx.Client(base_url=srv.url) as http:
        statuses = [http.post("/v1/completions", json=body) for _ in range(90)]
    assert {r.status_code for r in statuses} == {200}
    assert not any(h.startswith("x-ratelimit") for h in statuses[-1].headers)


# -- smaller ones ---------------------------------------------------------------------------------


def test_docs_routes_need_the_operator_to_open_them_when_auth_is_on(
    guarded: RunningServer,
) -> None:
    """With auth on and DOCS_ENABLED unset, /docs, /redoc and /openapi.json are not served."""
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert httpx.get(guarded.url + path).status_code == 404, path


@pytest.mark.parametrize(
    ("field", "value"),
    [("model", "m" * 10_000), ("stop", ["s" * 10_000]), ("user", "u" * 10_000)],
)
def test_unbounded_strings_are_refused(
    server: RunningServer, model_id: str, field: str, value: Any
) -> None:
    """A 10,000-character ``model``, stop string or ``user`` is 400 naming the field: none is
    echoed into logs or error messages whole."""
    body = {"model": model_id, "messages": STORY, "max_tokens": 1, field: value}
    response = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=30)
    error = error_of(response, 400)
    assert error["param"].startswith(field), error
    assert len(error["message"]) < 500
