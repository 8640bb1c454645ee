"""The resilience layer in front of the real engine: priority order, overload, breaker,
deadlines. Each test serves its own app (its own queue and breaker) on the shared engine."""

from __future__ import annotations

import json
import statistics
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from app.engine.faults import FaultInjectingEngine, FaultPlan
from app.engine.manager import EngineManager
from app.main import create_app
from tests.conftest import make_settings
from tests.support.servers import LoopThread, RunningServer, start_server, stop_server
from tests.support.spec import validate

PROMPT = [{"role": "user", "content": "Tell me a story"}]


@contextmanager
def serving(loop: LoopThread, engine: Any, **resilience: Any) -> Iterator[RunningServer]:
    running = start_server(loop, create_app(make_settings(resilience=resilience), engine))
    try:
        yield running
    finally:
        stop_server(running)


def chat(url: str, max_tokens: int, **extra: Any) -> httpx.Response:
    body = {"model": "tiny-llama", "messages": PROMPT, "max_tokens": max_tokens}
    body |= {"ignore_eos": True, **extra.pop("body", {})}
    return httpx.post(url + "/v1/chat/completions", json=body, timeout=120, **extra)


def in_threads(calls: list[Any]) -> list[Any]:
    results: list[Any] = [None] * len(calls)

    def run(i: int) -> None:
        results[i] = calls[i]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
        time.sleep(0.02)  # keep arrival order deterministic
    for thread in threads:
        thread.join()
    return results


def test_high_priority_is_admitted_before_earlier_low_priority(
    loop_thread: LoopThread, engine: EngineManager
) -> None:
    """With CONCURRENCY_LIMIT=1, queued priority-5 requests run before earlier priority-9 ones."""
    done: dict[str, float] = {}
    with serving(loop_thread, engine, concurrency_limit=1, aging_rate=0) as srv:

        def call(name: str, priority: int, tokens: int) -> None:
            response = chat(srv.url, tokens, headers={"X-Priority": str(priority)})
            assert response.status_code == 200, response.text
            done[name] = time.monotonic()

        plan = [("blocker", 5, 300), ("low1", 9, 20), ("low2", 9, 20), ("high1", 5, 20)]
        plan += [("high2", 5, 20)]
        in_threads([lambda n=n, p=p, t=t: call(n, p, t) for n, p, t in plan])
    order = sorted(done, key=done.__getitem__)
    assert order[0] == "blocker"
    assert set(order[1:3]) == {"high1", "high2"}, order


def _burst(url: str, count: int, max_tokens: int) -> list[tuple[httpx.Response, float]]:
    def one() -> tuple[httpx.Response, float]:
        started = time.monotonic()
        response = chat(url, max_tokens)
        return response, time.monotonic() - started

    return in_threads([one] * count)


@pytest.mark.slow
@pytest.mark.parametrize("overload", [2, 10])
def test_overload_gives_only_200_429_503_and_respects_limits(
    loop_thread: LoopThread, engine: EngineManager, overload: int
) -> None:
    """A burst of 2x and 10x capacity: only 200/429/503 (with Retry-After), nothing past its
    deadline, and the engine never runs more than CONCURRENCY_LIMIT requests."""
    limits = {"concurrency_limit": 2, "max_queue_size": 4, "queue_timeout_s": 3}
    peak = 0
    stop = threading.Event()

    def watch() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, engine.num_unfinished_requests())
            time.sleep(0.002)

    watcher = threading.Thread(target=watch)
    with serving(loop_thread, engine, request_timeout_s=20, **limits) as srv:
        watcher.start()
        results = _burst(srv.url, 2 * overload, 64)
        stop.set()
        watcher.join()
    statuses = Counter(response.status_code for response, _ in results)
    assert set(statuses) <= {200, 429, 503}, statuses
    assert statuses[200] >= 2
    for response, _ in results:
        if response.status_code != 200:
            assert int(response.headers["Retry-After"]) >= 1
            validate("ErrorResponse", response.json())
    assert max(elapsed for _, elapsed in results) < 20
    assert peak <= 2, peak
    print(f"\noverload {overload}x statuses={dict(statuses)} {_p99(results)}")


def _p99(results: list[tuple[httpx.Response, float]]) -> str:
    admitted = sorted(elapsed for response, elapsed in results if response.status_code == 200)
    if len(admitted) < 2:
        return f"admitted={len(admitted)}"
    p99 = statistics.quantiles(admitted, n=100, method="inclusive")[98]
    return f"admitted={len(admitted)} p50={statistics.median(admitted):.2f}s p99={p99:.2f}s"


def test_breaker_opens_fails_fast_half_opens_and_closes(
    loop_thread: LoopThread, engine: EngineManager
) -> None:
    """Injected engine failures open the breaker (503 + Retry-After, fast); after the reset
    timeout one trial goes through, succeeds, and the breaker closes."""
    faulty = FaultInjectingEngine(engine, FaultPlan(fail_requests=3))
    settings = {"breaker_fail_max": 3, "breaker_reset_timeout_s": 2}
    with serving(loop_thread, faulty, **settings) as srv:
        failures = [chat(srv.url, 4).status_code for _ in range(3)]
        assert failures == [500, 500, 500]
        started = time.monotonic()
        refused = chat(srv.url, 4)
        assert refused.status_code == 503 and time.monotonic() - started < 0.5
        assert refused.json()["error"]["code"] == "engine_unavailable"
        assert 1 <= int(refused.headers["Retry-After"]) <= 2
        assert httpx.get(srv.url + "/readyz").status_code == 503
        time.sleep(2.1)
        assert chat(srv.url, 4).status_code == 200
        stats = httpx.get(srv.url + "/resilience/stats").json()
        assert stats["deployments"]["local"]["breaker"]["state"] == "closed"
        assert httpx.get(srv.url + "/readyz").status_code == 200


def test_client_errors_do_not_trip_the_breaker(
    loop_thread: LoopThread, engine: EngineManager
) -> None:
    """Context overflows (400s) and disconnects never count as engine failures."""
    with serving(loop_thread, engine, breaker_fail_max=1) as srv:
        for _ in range(3):
            assert chat(srv.url, 5000).status_code == 400
        assert chat(srv.url, 4).status_code == 200
        assert (
            httpx.get(srv.url + "/resilience/stats").json()["deployments"]["local"]["breaker"][
                "state"
            ]
            == "closed"
        )


def test_error_mid_stream_is_a_final_sse_error_event(
    loop_thread: LoopThread, engine: EngineManager
) -> None:
    """A failure after the 200 arrives as one SSE error event, then [DONE]; nothing hangs."""
    faulty = FaultInjectingEngine(engine, FaultPlan(fail_requests=1, fail_after_steps=2))
    with serving(loop_thread, faulty) as srv:
        body = {"model": "tiny-llama", "messages": PROMPT, "max_tokens": 50, "stream": True}
        with httpx.stream("POST", srv.url + "/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])
    validate("ErrorResponse", error)
    assert error["error"]["code"] == "engine_error"


def test_deadline_gives_504_and_frees_the_engine(
    loop_thread: LoopThread, engine: EngineManager
) -> None:
    """A per-request timeout shorter than the work gives 504 (JSON, or a final SSE event
    when streaming), and the engine request is aborted."""
    with serving(loop_thread, engine) as srv:
        response = chat(srv.url, 900, body={"timeout": 0.3})
        assert response.status_code == 504
        validate("ErrorResponse", response.json())
        assert response.headers["Retry-After"] and response.json()["error"]["code"] == "timeout"
        body = {"model": "tiny-llama", "messages": PROMPT, "max_tokens": 900, "ignore_eos": True}
        body |= {"stream": True, "timeout": 0.3}
        with httpx.stream("POST", srv.url + "/v1/chat/completions", json=body) as stream:
            events = [line[6:] for line in stream.iter_lines() if line.startswith("data: ")]
        assert json.loads(events[-2])["error"]["code"] == "timeout"
    deadline = time.monotonic() + 5
    while engine.num_unfinished_requests() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert engine.num_unfinished_requests() == 0
