"""The pipeline routes' fast lane (app/api/fast_lane.py): ``POST`` to them skips the
framework's layers, and nothing a client or an SRE sees changes."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from app.main import create_app
from tests.conftest import make_settings
from tests.support.scripted_engine import ScriptedEngine
from tests.support.servers import LoopThread, start_server, stop_server

ROUTE = "/v1/chat/completions"
PIPELINE_ROUTES = {
    "/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/generate", "/v1/stream",
}  # fmt: skip


def test_every_pipeline_route_and_only_those_take_the_fast_lane() -> None:
    app = create_app(make_settings(), ScriptedEngine())
    assert app.fast_lane_paths == PIPELINE_ROUTES  # type: ignore[attr-defined]
    schema = app.openapi()
    assert all("post" in schema["paths"][path] for path in PIPELINE_ROUTES)  # still documented


def _requests_counted(text: str, route: str) -> float:
    for family in text_string_to_metric_families(text):
        if family.name == "gateway_requests":
            return sum(
                s.value
                for s in family.samples
                if s.name == "gateway_requests_total"
                and s.labels["route"] == route
                and s.labels["status"] == "200"
            )
    return 0.0


def test_a_fast_lane_stream_keeps_its_headers_route_label_and_body_limit(
    loop_thread: LoopThread,
) -> None:
    """A streamed chat completion through the lane: the request context's headers, the
    metrics labelled by the route's template, the body limit, and the framework's answers
    for what the lane does not take (another method, an unknown route)."""
    settings = make_settings(max_body_bytes=4096)
    running = start_server(loop_thread, create_app(settings, ScriptedEngine()))
    url = running.url
    try:
        body = {
            "model": "tiny-llama",
            "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": 3,
            "stream": True,
        }
        counted = _requests_counted(httpx.get(url + "/metrics", timeout=10).text, ROUTE)
        with httpx.stream("POST", url + ROUTE, json=body, timeout=30) as r:
            events = [line for line in r.iter_lines() if line.startswith("data: ")]
            headers = r.headers
        assert r.status_code == 200 and events[-1] == "data: [DONE]"
        assert headers["x-model"] == "tiny-llama" and headers["x-deployment"] == "local"
        assert headers["x-request-id"] and float(headers["x-duration-ms"]) >= 0
        metrics = httpx.get(url + "/metrics", timeout=10).text
        assert _requests_counted(metrics, ROUTE) == counted + 1  # the registry is the process's

        big = {**body, "messages": [{"role": "user", "content": "x" * 5000}]}
        too_big = httpx.post(url + ROUTE, json=big, timeout=30)
        assert too_big.status_code == 413 and too_big.json()["error"]["type"]

        wrong_method = httpx.get(url + ROUTE, timeout=10)
        assert wrong_method.status_code == 405 and wrong_method.json()["error"]["message"]
        unknown = httpx.post(url + "/v1/chat/completions/extra", json=body, timeout=10)
        assert unknown.status_code == 404 and unknown.json()["error"]["message"]
    finally:
        stop_server(running)
