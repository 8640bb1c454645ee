"""Tool requests take the one pipeline, like any other, against the real engine: charged
(429 when the key's tokens cannot cover them), bounded by the deadline (504, the engine
request dropped), and counted in the metrics. Each test serves an app of its own."""

from __future__ import annotations

import re

import httpx

from app.engine.manager import EngineManager
from tests.conftest import make_settings
from tests.e2e.test_pipeline_holes import error_of, serving, wait_idle
from tests.support.servers import LoopThread
from tests.support.tools import TOOLS, WEATHER_QUESTION, check_call

KEY = "sk-tools-0123456789abcdef01234"
HEADERS = {"Authorization": f"Bearer {KEY}"}
REQUIRED = {"tools": TOOLS, "tool_choice": "required", "temperature": 0}


def _counter(metrics: str, name: str, **labels: str) -> float:
    """A sample of ``name`` from a Prometheus exposition (0 when absent)."""
    want = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    for line in metrics.splitlines():
        match = re.fullmatch(rf"{name}\{{(.*)\}} (\S+)", line)
        if match and ",".join(sorted(match.group(1).split(","))) == want:
            return float(match.group(2))
    return 0.0


def test_tool_calls_are_charged_and_counted(
    loop_thread: LoopThread, engine: EngineManager, model_id: str
) -> None:
    """A tool request whose prompt and max_tokens exceed the key's tokens is 429 before
    it queues; one that fits is served, its tokens charged and counted in the metrics."""
    auth = {"enable_auth": True, "api_keys": KEY, "rate_limit_tpm": 900}
    settings = make_settings(auth={**auth, "admin_routes_require_key": False})
    body = {"model": model_id, "messages": WEATHER_QUESTION, **REQUIRED}
    with serving(loop_thread, engine, settings) as srv:
        url = srv.url + "/v1/chat/completions"
        refused = httpx.post(url, json={**body, "max_tokens": 400}, headers=HEADERS)
        assert error_of(refused, 429)["code"] == "rate_limit_exceeded"
        before = httpx.get(srv.url + "/metrics").text
        reply = httpx.post(
            url, json={**body, "max_tokens": 60, "parallel_tool_calls": False}, headers=HEADERS
        )
        assert reply.status_code == 200, reply.text
        after = httpx.get(srv.url + "/metrics").text
        info = httpx.get(srv.url + "/auth/info", headers=HEADERS).json()
    usage = reply.json()["usage"]
    check_call(reply.json()["choices"][0]["message"]["tool_calls"][0])
    route = {"route": "/v1/chat/completions", "model": model_id}
    served = _counter(after, "gateway_requests_total", **route, status="200")
    assert served - _counter(before, "gateway_requests_total", **route, status="200") == 1
    generated = _counter(after, "gateway_completion_tokens_total", model=model_id)
    counted = generated - _counter(before, "gateway_completion_tokens_total", model=model_id)
    assert counted == usage["completion_tokens"]
    assert info["remaining"]["tokens"] <= 900 - usage["total_tokens"] + 60  # + 4 s of refill


def test_a_tool_call_past_its_deadline_is_504_and_leaves_the_engine(
    loop_thread: LoopThread, engine: EngineManager, model_id: str
) -> None:
    """A request's own timeout bounds a forced call like any generation: 504, and the
    engine request is aborted."""
    body = {"model": model_id, "messages": WEATHER_QUESTION, **REQUIRED, "max_tokens": 400}
    with serving(loop_thread, engine, make_settings()) as srv:
        response = httpx.post(srv.url + "/v1/chat/completions", json={**body, "timeout": 0.05})
        assert error_of(response, 504)["type"] == "timeout_error"
        assert wait_idle(engine, timeout=5) < 5
