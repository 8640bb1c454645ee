"""Routing over real deployments: the session's in-process engine (``local-a``) and vLLM's
own OpenAI server as a second process (``vllm-b``), behind one gateway built from a
MODELS_FILE; a broken upstream on loopback; a registry that comes and goes.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from openai import OpenAI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from app.config import Settings
from app.engine.manager import EngineManager
from app.main import create_app
from app.routing.settings import RoutingSettings
from loadtest.engine_pace import engine_itl_ms, read_pace
from loadtest.servers import ServerProcess
from tests.conftest import make_settings
from tests.support.servers import LoopThread, RunningServer, start_server, stop_server
from tests.support.spec import validate
from tests.support.upstreams import MODEL_DIR, broken_upstream, drop_first_posts, vllm_server

pytestmark = pytest.mark.slow
STORY = [{"role": "user", "content": "Tell me a story"}]


@pytest.fixture(scope="module")
def vllm_b(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """vLLM's server on the embedded model, 2048 tokens of context (the local engine: 1024)."""
    server = vllm_server(Path(tmp_path_factory.mktemp("vllm")), max_model_len=2048)
    server.start()
    try:
        server.wait_ready(300)
        yield server
    finally:
        server.stop()


def catalogue(vllm_url: str, strategy: str = "round_robin", **extra: Any) -> dict[str, Any]:
    remote = {"kind": "openai", "base_url": f"{vllm_url}/v1", "resume": "tokens"}
    remote["health"] = {"interval_s": 0.5, "failures": 1}
    return {
        "models": [
            {
                "id": "tiny-llama",
                "aliases": ["default"],
                "deployments": [{"name": "local-a", "kind": "local"}, {"name": "vllm-b", **remote}],
            },
            {
                "id": "tiny-llama-long",
                "deployments": [{"name": "long", **remote, "model": "tiny-llama"}],
                "context_length": 2048,
                "tokenizer": str(MODEL_DIR),
            },
        ],
        "routing": {"strategy": strategy},
        "context_overflow": {"tiny-llama": "tiny-llama-long"},
        **extra,
    }


def with_models(path: Path, document: dict[str, Any], **routing: Any) -> Settings:
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    settings = make_settings()
    settings.routing = RoutingSettings(models_file=path, **routing)
    return settings


@contextmanager
def gateway(loop: LoopThread, engine: EngineManager, settings: Settings) -> Iterator[RunningServer]:
    running = start_server(loop, create_app(settings, local_engines={"local-a": engine}))
    try:
        yield running
    finally:
        stop_server(running)


def wait_until(condition: Any, timeout: float, what: str) -> float:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, what
        time.sleep(0.1)
    return time.monotonic() - started


def deployment(url: str, name: str) -> dict[str, Any]:
    return dict(httpx.get(url + "/resilience/stats").json()["deployments"][name])


@pytest.fixture(scope="module")
def routed(
    loop_thread: LoopThread,
    engine: EngineManager,
    vllm_b: ServerProcess,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RunningServer]:
    path = Path(tmp_path_factory.mktemp("models")) / "models.yaml"
    settings = with_models(path, catalogue(vllm_b.base_url))
    settings.resilience.breaker_reset_timeout_s = 2  # re-admission after a restart is quick
    with gateway(loop_thread, engine, settings) as srv:
        wait_until(lambda: httpx.get(srv.url + "/readyz").status_code == 200, 30, "ready")
        yield srv


def test_the_benchmarks_engine_pace_counts_the_gaps_of_vllms_real_stream(
    vllm_b: ServerProcess,
) -> None:
    """What the proxy benchmark reads (loadtest/engine_pace.py), from vLLM's own server: a
    12-token stream adds 11 gaps between tokens, each a positive time the engine core
    stamped."""
    before = read_pace(vllm_b.base_url)
    with OpenAI(base_url=f"{vllm_b.base_url}/v1", api_key="none", max_retries=0) as sdk:
        stream = sdk.completions.create(
            model="tiny-llama", prompt="count: one two", max_tokens=12, stream=True,
            extra_body={"ignore_eos": True},
        )  # fmt: skip
        texts = [chunk.choices[0].text for chunk in stream if chunk.choices]
    after = read_pace(vllm_b.base_url)
    assert before is not None and after is not None
    assert "".join(texts)
    assert after.gaps - before.gaps == 11
    gap_ms = engine_itl_ms(before, after)
    assert gap_ms is not None and 0 < gap_ms < 5000


def test_requests_spread_over_both_deployments_with_who_served_in_headers(
    routed: RunningServer,
) -> None:
    """Round robin over the in-process engine and vLLM's server: both serve, each response
    (streams too) says X-Model and X-Deployment, and every body matches OpenAI's schema."""
    client = OpenAI(base_url=routed.base_url, api_key="k", max_retries=0)
    served = Counter()
    for stream in (False, True) * 3:
        raw = client.chat.completions.with_raw_response.create(
            model="default",
            messages=STORY,  # type: ignore[arg-type]
            max_tokens=8,
            stream=stream,
            extra_body={"ignore_eos": True},
        )
        assert raw.headers["x-model"] == "tiny-llama"
        served[raw.headers["x-deployment"]] += 1
        parsed = raw.parse()
        if stream:
            chunks = list(parsed)  # type: ignore[arg-type]
            assert chunks[-1].choices[0].finish_reason == "length"
            for chunk in chunks:
                validate("CreateChatCompletionStreamResponse", chunk.model_dump(exclude_unset=True))
        else:
            validate("CreateChatCompletionResponse", parsed.model_dump(exclude_unset=True))  # type: ignore[union-attr]
    assert set(served) == {"local-a", "vllm-b"}


def test_a_remote_deployment_answers_token_for_token_like_the_local_engine(
    routed: RunningServer,
) -> None:
    """Greedy, the same prompt on both deployments gives the same text and token count:
    the gateway sends its own token ids and counts the ones that come back."""
    body = {"model": "tiny-llama", "messages": STORY, "max_tokens": 24, "temperature": 0}
    answers = {}
    for _ in range(4):
        response = httpx.post(routed.url + "/v1/chat/completions", json=body, timeout=60)
        usage = response.json()["usage"]
        text = response.json()["choices"][0]["message"]["content"]
        answers[response.headers["x-deployment"]] = (text, usage["completion_tokens"])
    assert set(answers) == {"local-a", "vllm-b"}
    assert answers["local-a"] == answers["vllm-b"]


def test_a_request_past_the_context_goes_to_the_overflow_model(routed: RunningServer) -> None:
    """Prompt + max_tokens past tiny-llama's 1024 tokens: counted with its tokenizer before
    anything is sent, it is answered by tiny-llama-long (X-Model), not refused."""
    prompt = "once upon a time " * 250
    body = {"model": "tiny-llama", "prompt": prompt, "max_tokens": 200}
    response = httpx.post(routed.url + "/v1/completions", json=body, timeout=60)
    assert response.status_code == 200, response.text
    assert response.headers["x-model"] == "tiny-llama-long"
    assert response.headers["x-deployment"] == "long"
    assert response.json()["model"] == "tiny-llama-long"
    assert 1024 < response.json()["usage"]["total_tokens"] <= 2048


def test_models_lists_every_model_and_alias(routed: RunningServer) -> None:
    listed = httpx.get(routed.url + "/v1/models").json()
    validate("ListModelsResponse", listed)
    assert {card["id"] for card in listed["data"]} == {"tiny-llama", "default", "tiny-llama-long"}


def test_a_killed_remote_is_ejected_at_once_and_readmitted_when_it_returns(
    routed: RunningServer, vllm_b: ServerProcess
) -> None:
    """SIGKILL vLLM's server (a preempted node): the next requests are all served by the
    local engine (a refused connection fails over before the first byte), the dead one is
    ejected, and it serves again once restarted. Prints the failover timing."""
    body = {"model": "tiny-llama", "messages": STORY, "max_tokens": 4}
    assert vllm_b.proc is not None
    os.killpg(vllm_b.proc.pid, signal.SIGKILL)  # the whole process group, as a lost node
    killed = time.monotonic()
    first = httpx.post(routed.url + "/v1/chat/completions", json=body, timeout=60)
    first_served = time.monotonic() - killed
    assert first.status_code == 200 and first.headers["x-deployment"] == "local-a"
    for _ in range(6):
        response = httpx.post(routed.url + "/v1/chat/completions", json=body, timeout=60)
        assert response.status_code == 200 and response.headers["x-deployment"] == "local-a"
    ejected = wait_until(lambda: deployment(routed.url, "vllm-b")["status"] == "down", 5, "eject")
    vllm_b.stop()  # reap it
    vllm_b.start()
    vllm_b.wait_ready(300)
    back = wait_until(lambda: deployment(routed.url, "vllm-b")["status"] == "up", 10, "re-admitted")
    served = {
        httpx.post(routed.url + "/v1/chat/completions", json=body).headers["x-deployment"]
        for _ in range(4)
    }
    assert served == {"local-a", "vllm-b"}
    print(
        f"\nfailover: first request after the kill served in {first_served:.2f}s; "
        f"ejected after {ejected:.1f}s more; re-admitted {back:.1f}s after it was up"
    )


# -- upstreams that answer badly ----------------------------------------------------------------


def one_remote_model(spec: dict[str, Any]) -> dict[str, Any]:
    """A catalogue of one model, ``m``, served by the one deployment ``spec``."""
    model = {"id": "m", "deployments": [spec], "context_length": 1024, "tokenizer": str(MODEL_DIR)}
    return {"models": [model]}


@pytest.fixture
def broken(loop_thread: LoopThread) -> Iterator[tuple[RunningServer, dict[str, str]]]:
    mode = {"how": "garbage"}
    running = start_server(loop_thread, broken_upstream(mode))
    yield running, mode
    stop_server(running)


@pytest.mark.parametrize(
    ("how", "status"),
    [("garbage", 502), ("cut", 502), ("html200", 502), ("hang", 504), ("error500", 503),
     ("busy429", 503)],
)  # fmt: skip
def test_bad_upstream_answers_are_an_openai_error_never_a_500_or_a_hang(
    loop_thread: LoopThread,
    engine: EngineManager,
    broken: tuple[RunningServer, dict[str, str]],
    tmp_path: Path,
    how: str,
    status: int,
) -> None:
    """Garbage JSON, a cut or non-SSE stream, a hung upstream (3 s of silence), a 500 or a
    429: the client gets OpenAI's error envelope with a 5xx status, within seconds."""
    upstream, mode = broken
    mode["how"] = how
    spec = {"name": "broken", "kind": "openai", "base_url": f"{upstream.url}/v1", "timeout_s": 3}
    document = one_remote_model(spec)
    with gateway(loop_thread, engine, with_models(tmp_path / "m.yaml", document)) as srv:
        started = time.monotonic()
        body = {"model": "m", "prompt": "hi", "max_tokens": 4, "stream": True}
        response = httpx.post(srv.url + "/v1/completions", json=body, timeout=30)
    assert time.monotonic() - started < 10
    assert response.status_code == status, response.text
    validate("ErrorResponse", response.json())


def test_a_request_dropped_unanswered_is_sent_once_more_on_a_new_connection(
    loop_thread: LoopThread,
    engine: EngineManager,
    broken: tuple[RunningServer, dict[str, str]],
    tmp_path: Path,
) -> None:
    """The upstream closes the connection as the request arrives (as a server closing an
    idle pooled connection does): the deployment sends it once more, on a new connection,
    and the client gets the answer; the deployment counts no failure."""
    upstream, mode = broken
    mode["how"] = "ok"
    hop = loop_thread.run(drop_first_posts(upstream.port, drops=1))
    port = hop.sockets[0].getsockname()[1]
    spec = {"name": "flaky", "kind": "openai", "base_url": f"http://127.0.0.1:{port}/v1"}
    document = one_remote_model(spec)
    try:
        with gateway(loop_thread, engine, with_models(tmp_path / "m.yaml", document)) as srv:
            body = {"model": "m", "prompt": "hi", "max_tokens": 2}
            first = httpx.post(srv.url + "/v1/completions", json=body, timeout=30)
            assert first.status_code == 200, first.text
            assert first.json()["choices"][0]["text"] == "hi"
            assert deployment(srv.url, "flaky")["outcomes"] == {"ok": 1}
    finally:
        loop_thread.loop.call_soon_threadsafe(hop.close)  # servers belong to their loop


def test_an_open_breaker_tries_again_once_health_checks_pass(
    loop_thread: LoopThread,
    engine: EngineManager,
    broken: tuple[RunningServer, dict[str, str]],
    tmp_path: Path,
) -> None:
    """A sole remote deployment answers 500 until its breaker opens: clients get 503s (the
    breaker's, or a failed trial's once a health check passed). Once it answers again, a
    passing health check lets the breaker's trial go: served again within about a check
    interval, not after the 30 s reset timeout."""
    upstream, mode = broken
    mode["how"] = "error500"
    spec = {"name": "flaky", "kind": "openai", "base_url": f"{upstream.url}/v1"}
    spec["health"] = {"interval_s": 0.3}
    document = one_remote_model(spec)
    settings = with_models(tmp_path / "m.yaml", document)
    assert settings.resilience.breaker_reset_timeout_s == 30
    with gateway(loop_thread, engine, settings) as srv:
        body = {"model": "m", "prompt": "hi", "max_tokens": 2}

        def post() -> httpx.Response:
            return httpx.post(srv.url + "/v1/completions", json=body, timeout=30)

        while deployment(srv.url, "flaky")["breaker"]["state"] != "open":
            assert post().status_code == 503
        refused = post()
        assert refused.status_code == 503
        validate("ErrorResponse", refused.json())
        mode["how"] = "ok"
        back = wait_until(lambda: post().status_code == 200, 5, "served again")
        assert deployment(srv.url, "flaky")["breaker"]["state"] == "closed"
    print(f"\nre-admitted by a health check {back:.2f}s after the upstream recovered")


def test_requests_wait_for_a_trial_in_flight_instead_of_failing(
    loop_thread: LoopThread,
    engine: EngineManager,
    broken: tuple[RunningServer, dict[str, str]],
    tmp_path: Path,
) -> None:
    """A sole deployment recovering: its breaker's trial request is in flight (a slow
    answer, 0.5 s) as four more arrive. They wait for the trial's verdict and are served,
    rather than being refused with 503 while it runs."""
    upstream, mode = broken
    mode["how"] = "error500"
    spec = {"name": "flaky", "kind": "openai", "base_url": f"{upstream.url}/v1"}
    spec["health"] = {"interval_s": 0.2}
    document = one_remote_model(spec)
    with gateway(loop_thread, engine, with_models(tmp_path / "m.yaml", document)) as srv:
        body = {"model": "m", "prompt": "hi", "max_tokens": 2}

        def post() -> httpx.Response:
            return httpx.post(srv.url + "/v1/completions", json=body, timeout=30)

        while deployment(srv.url, "flaky")["breaker"]["state"] != "open":
            assert post().status_code == 503
        mode["how"] = "slow"
        wait_until(lambda: deployment(srv.url, "flaky")["status"] != "down", 5, "trial allowed")
        with ThreadPoolExecutor(5) as pool:
            trial = pool.submit(post)
            time.sleep(0.2)  # the trial is in flight
            others = [pool.submit(post) for _ in range(4)]
            statuses = [f.result().status_code for f in [trial, *others]]
        assert statuses == [200] * 5
        assert deployment(srv.url, "flaky")["breaker"]["state"] == "closed"


def test_a_broken_deployment_is_routed_around(
    loop_thread: LoopThread,
    engine: EngineManager,
    broken: tuple[RunningServer, dict[str, str]],
    tmp_path: Path,
) -> None:
    """A broken upstream ahead of the local engine: every request is still answered, by the
    local engine, and the broken one's breaker hears the failures."""
    upstream, _ = broken
    bad = {"name": "broken", "kind": "openai", "base_url": f"{upstream.url}/v1"}
    document = {
        "models": [
            {"id": "tiny-llama", "deployments": [bad, {"name": "local-a", "kind": "local"}]}
        ],
        "routing": {"strategy": "round_robin"},
    }
    with gateway(loop_thread, engine, with_models(tmp_path / "m.yaml", document)) as srv:
        body = {"model": "tiny-llama", "prompt": "hi", "max_tokens": 4}
        for _ in range(4):
            response = httpx.post(srv.url + "/v1/completions", json=body, timeout=30)
            assert response.status_code == 200 and response.headers["x-deployment"] == "local-a"
        assert deployment(srv.url, "broken")["outcomes"]["retried"] >= 1


# -- where the catalogue comes from -----------------------------------------------------------


def _registry_app(document: dict[str, Any]) -> Starlette:
    async def models(request: Request) -> JSONResponse:
        return JSONResponse(document)

    return Starlette(routes=[Route("/models", models)])


def test_a_registry_is_followed_cached_and_outlived(
    loop_thread: LoopThread, engine: EngineManager, tmp_path: Path
) -> None:
    """The registry's catalogue (with the alias ``from-registry``) replaces the file's; with
    the registry gone the last good copy on disk serves a new gateway; with neither, the
    static file does — never an empty catalogue."""
    local = [{"name": "local-a", "kind": "local"}]
    from_registry = {
        "models": [{"id": "tiny-llama", "aliases": ["from-registry"], "deployments": local}]
    }
    registry = start_server(loop_thread, _registry_app(from_registry))
    cache = tmp_path / "cache" / "registry.json"
    spec = {"url": f"{registry.url}/models", "poll_s": 0.2, "cache": str(cache)}
    static = {"models": [{"id": "tiny-llama", "deployments": local}], "registry": spec}
    settings = with_models(tmp_path / "models.yaml", static)
    body = {"model": "from-registry", "prompt": "hi", "max_tokens": 2}

    def served(url: str) -> int:
        return httpx.post(url + "/v1/completions", json=body, timeout=30).status_code

    with gateway(loop_thread, engine, settings) as srv:
        assert served(srv.url) == 200 and cache.exists()
        stop_server(registry)
        time.sleep(0.5)  # polls fail: the catalogue in use stays
        assert served(srv.url) == 200
    with gateway(loop_thread, engine, settings) as srv:  # registry down: the cached copy
        assert served(srv.url) == 200
    cache.unlink()
    with gateway(loop_thread, engine, settings) as srv:  # neither: the static file
        assert served(srv.url) == 404
        assert httpx.post(
            srv.url + "/v1/completions", json={**body, "model": "tiny-llama"}
        ).is_success


def test_a_changed_models_file_is_reloaded_without_dropping_a_stream(
    loop_thread: LoopThread, engine: EngineManager, vllm_b: ServerProcess, tmp_path: Path
) -> None:
    """A stream runs on the local engine while MODELS_FILE gains an alias and a remote
    deployment: the stream ends normally, and the new alias and deployment serve."""
    path = tmp_path / "models.yaml"
    first = {
        "models": [{"id": "tiny-llama", "deployments": [{"name": "local-a", "kind": "local"}]}]
    }
    settings = with_models(path, first, models_reload_s=0.2)
    with gateway(loop_thread, engine, settings) as srv:
        result: dict[str, Any] = {}

        def stream() -> None:
            body = {"model": "tiny-llama", "messages": STORY, "max_tokens": 600, "stream": True}
            body["ignore_eos"] = True
            with httpx.stream("POST", srv.url + "/v1/chat/completions", json=body, timeout=60) as r:
                result["lines"] = [line for line in r.iter_lines() if line]

        thread = threading.Thread(target=stream)
        thread.start()
        time.sleep(0.3)
        second = catalogue(vllm_b.base_url)
        second["models"][0]["aliases"] = ["renamed"]
        path.write_text(yaml.safe_dump(second), encoding="utf-8")
        renamed = {"model": "renamed", "prompt": "hi", "max_tokens": 2}
        wait_until(
            lambda: httpx.post(srv.url + "/v1/completions", json=renamed).status_code == 200,
            10,
            "reload",
        )
        thread.join(timeout=60)
    assert (
        result["lines"][-1] == "data: [DONE]" and '"finish_reason":"length"' in result["lines"][-2]
    )
