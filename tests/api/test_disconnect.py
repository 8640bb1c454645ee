"""A client that goes away stops its engine request: no compute on abandoned requests."""

from __future__ import annotations

import time

import httpx
import pytest

from app.engine.manager import EngineManager
from tests.support.servers import RunningServer

LONG = {"max_tokens": 900, "ignore_eos": True, "temperature": 0}
PROMPT = [{"role": "user", "content": "Tell me a story"}]


def _wait_idle(engine: EngineManager, timeout: float) -> float:
    """Seconds until the engine has no unfinished request; fails after ``timeout``."""
    started = time.monotonic()
    while engine.num_unfinished_requests():
        if time.monotonic() - started > timeout:
            pytest.fail(f"engine still has {engine.num_unfinished_requests()} requests")
        time.sleep(0.01)
    return time.monotonic() - started


@pytest.fixture(scope="module")
def full_run_s(http_module: httpx.Client, model_id: str) -> float:
    """How long the long request takes when nobody disconnects."""
    started = time.monotonic()
    body = {"model": model_id, "messages": PROMPT, **LONG}
    assert http_module.post("/v1/chat/completions", json=body).status_code == 200
    return time.monotonic() - started


@pytest.fixture(scope="module")
def http_module(server: RunningServer) -> httpx.Client:
    return httpx.Client(base_url=server.url, timeout=120)


def test_stream_disconnect_aborts_engine_request(
    server: RunningServer, engine: EngineManager, model_id: str, full_run_s: float
) -> None:
    """Closing a long stream after a few chunks drops the engine's running count to zero
    well before the request would have finished."""
    body = {"model": model_id, "messages": PROMPT, "stream": True, **LONG}
    with httpx.Client(base_url=server.url, timeout=60) as client:
        with client.stream("POST", "/v1/chat/completions", json=body) as response:
            lines = response.iter_lines()
            for _ in range(3):
                next(lines)
            assert engine.num_unfinished_requests() == 1
        closed_at = time.monotonic()
    idle_after = _wait_idle(engine, timeout=full_run_s)
    assert time.monotonic() - closed_at < full_run_s / 2, (idle_after, full_run_s)


def test_non_stream_disconnect_aborts_engine_request(
    server: RunningServer, engine: EngineManager, model_id: str, full_run_s: float
) -> None:
    """A non-streaming client that times out and closes also aborts its engine request."""
    body = {"model": model_id, "messages": PROMPT, **LONG}
    give_up = min(0.5, full_run_s / 4)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + "/v1/chat/completions", json=body, timeout=give_up)
    closed_at = time.monotonic()
    _wait_idle(engine, timeout=full_run_s)
    assert time.monotonic() - closed_at < full_run_s / 2
