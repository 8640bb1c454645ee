"""An engine that is not loaded yet: probes and routes answer 503 with Retry-After."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from app.engine.manager import EngineManager
from app.main import create_app
from tests.conftest import make_settings
from tests.support.servers import LoopThread, RunningServer, start_server, stop_server
from tests.support.spec import validate


@pytest.fixture(scope="module")
def cold_server(loop_thread: LoopThread) -> Iterator[RunningServer]:
    settings = make_settings()
    running = start_server(loop_thread, create_app(settings, EngineManager(settings.engine)))
    yield running
    stop_server(running)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/readyz"),
        ("POST", "/v1/chat/completions"),
        ("POST", "/v1/completions"),
    ],
)
def test_not_ready_is_503_with_retry_after(
    cold_server: RunningServer, method: str, path: str
) -> None:
    """Until the model is loaded, readiness and generation answer 503 with Retry-After."""
    body = {"model": "tiny-llama", "messages": [{"role": "user", "content": "Hi"}], "prompt": "x"}
    response = httpx.request(
        method, cold_server.url + path, json=body if method == "POST" else None
    )
    assert response.status_code == 503
    assert int(response.headers["Retry-After"]) >= 1
    assert int(response.headers["retry-after-ms"]) >= 1000
    validate("ErrorResponse", response.json())


def test_liveness_answers_while_not_ready(cold_server: RunningServer) -> None:
    """/healthz stays 200 while the engine is not ready."""
    assert httpx.get(cold_server.url + "/healthz").status_code == 200


def test_models_are_listed_while_they_load(cold_server: RunningServer) -> None:
    """/v1/models lists the configured model before its engine is up (its length is not
    known yet), so clients can discover it; an unknown model is still a 404."""
    listed = httpx.get(cold_server.url + "/v1/models").json()
    assert [card["id"] for card in listed["data"]] == ["tiny-llama"]
    assert "max_model_len" not in listed["data"][0]
    validate("ListModelsResponse", listed)
    body = {"model": "m", "prompt": "x"}
    assert httpx.post(cold_server.url + "/v1/completions", json=body).status_code == 404
