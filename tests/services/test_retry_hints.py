"""Retry-After while a local engine restarts is its supervisor's prediction, on a request
refused before it reaches the engine and on one the engine's death failed (real HTTP, a
scripted engine at the seam; the real-engine test is tests/e2e/test_engine_recovery.py)."""

from __future__ import annotations

import httpx

from app.main import create_app
from tests.conftest import make_settings
from tests.support.scripted_engine import ScriptedEngine
from tests.support.servers import LoopThread, start_server, stop_server

HELLO = [{"role": "user", "content": "Hi"}]


def _chat(url: str) -> httpx.Response:
    body = {"model": "tiny-llama", "messages": HELLO, "max_tokens": 4}
    return httpx.post(url + "/v1/chat/completions", json=body, timeout=10)


def test_a_restarting_engine_answers_with_its_predicted_time_to_ready(
    loop_thread: LoopThread,
) -> None:
    """Not ready, 42.3 s predicted: 503 with Retry-After 43 and retry-after-ms 42300; so
    does /readyz."""
    engine = ScriptedEngine(ready=False, ready_in_s=42.3)
    running = start_server(loop_thread, create_app(make_settings(), engine))
    try:
        response = _chat(running.url)
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "43"
        assert response.headers["retry-after-ms"] == "42300"
        ready = httpx.get(running.url + "/readyz")
        assert ready.status_code == 503 and ready.headers["Retry-After"] == "43"
    finally:
        stop_server(running)


def test_a_request_failed_by_the_engines_death_is_told_the_prediction_too(
    loop_thread: LoopThread,
) -> None:
    """The engine dies under a request: its 503 says when the restart should be done, not
    the engine's own fixed hint."""
    engine = ScriptedEngine(die_after=1, ready_in_s=7.0)
    running = start_server(loop_thread, create_app(make_settings(), engine))
    try:
        response = _chat(running.url)
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "engine_unavailable"
        assert response.headers["retry-after-ms"] == "7000"
    finally:
        stop_server(running)
