"""``/v1/embeddings`` through the whole pipeline, on scripted engines (deterministic): bounds
before any work, the model's task, its own admission, failover, and a gone client.

The same behaviours on the real pooling engine: tests/e2e/test_embeddings.py."""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml

from app.config import Settings
from app.main import create_app
from app.routing.settings import RoutingSettings
from tests.conftest import make_settings
from tests.support.scripted_engine import EMBEDDING_SIZE, ScriptedEngine
from tests.support.servers import LoopThread, RunningServer, start_server, stop_server
from tests.support.spec import validate

EMBED = "tiny-llama-embed"


@contextmanager
def serving(
    loop: LoopThread, embedder: ScriptedEngine, settings: Settings | None = None, **embedding: Any
) -> Iterator[tuple[RunningServer, ScriptedEngine]]:
    """The default catalogue with its embedding model; both engines scripted."""
    settings = settings or make_settings(embedding={"embedding_model": "embedded", **embedding})
    generator = ScriptedEngine()
    engines = {"local": generator, "local-embed": embedder}
    running = start_server(loop, create_app(settings, local_engines=engines))
    try:
        yield running, generator
    finally:
        stop_server(running)


def embed(url: str, timeout: float = 30, **body: Any) -> httpx.Response:
    return httpx.post(url + "/v1/embeddings", json={"model": EMBED, **body}, timeout=timeout)


def test_vectors_in_order_as_floats_or_base64_with_usage(loop_thread: LoopThread) -> None:
    """Each input's vector at its index; base64 is the same vector as little-endian float32;
    ``dimensions`` shortens it; usage counts the prompt tokens only."""
    with serving(loop_thread, ScriptedEngine()) as (srv, _):
        floats = embed(srv.url, input=["a", "bc", "a"])
        assert floats.status_code == 200, floats.text
        body = floats.json()
        validate("CreateEmbeddingResponse", body)
        assert [item["index"] for item in body["data"]] == [0, 1, 2]
        vectors = [item["embedding"] for item in body["data"]]
        assert vectors[0] == vectors[2] != vectors[1] and len(vectors[0]) == EMBEDDING_SIZE
        assert body["usage"] == {"prompt_tokens": 4, "total_tokens": 4}
        assert body["model"] == EMBED and floats.headers["X-Deployment"] == "local-embed"
        packed = embed(srv.url, input="a", encoding_format="base64").json()["data"][0]
        decoded = np.frombuffer(base64.b64decode(packed["embedding"]), dtype="<f4")
        assert np.allclose(decoded, vectors[0], atol=1e-7)
        short = embed(srv.url, input=[[97], [98, 99]], dimensions=3).json()
        assert [len(item["embedding"]) for item in short["data"]] == [3, 3]


def test_a_model_of_the_other_task_is_a_400_naming_the_model(loop_thread: LoopThread) -> None:
    with serving(loop_thread, ScriptedEngine()) as (srv, generator):
        chat = {"model": EMBED, "messages": [{"role": "user", "content": "hi"}]}
        wrong = httpx.post(srv.url + "/v1/chat/completions", json=chat, timeout=10)
        assert wrong.status_code == 400 and wrong.json()["error"]["param"] == "model"
        assert "/v1/embeddings" in wrong.json()["error"]["message"]
        refused = httpx.post(
            srv.url + "/v1/embeddings", json={"model": "tiny-llama", "input": "x"}, timeout=10
        )
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "model"
        listed = {m["id"] for m in httpx.get(srv.url + "/v1/models").json()["data"]}
        assert listed == {"tiny-llama", EMBED}
        assert httpx.get(srv.url + f"/v1/models/{EMBED}").status_code == 200
        assert not generator.calls_of("generate")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"input": ["a", "b", "c"]}, "At most 2 inputs"),
        ({"input": ["x" * 30, "y" * 30]}, "at most 50 per request"),
        ({"input": "z" * 33}, "maximum context length is 32 tokens; input[0] has 33"),
        ({"input": ""}, "must not be empty"),
        ({"input": [[]]}, "must not be empty"),
        ({"input": [-1]}, "token ids must be between"),
        ({"input": "a", "encoding_format": "hex"}, "encoding_format"),
        ({"input": "a", "dimensions": 0}, "dimensions"),
    ],
)
def test_bounds_are_400s_before_any_work(
    loop_thread: LoopThread, body: dict[str, Any], message: str
) -> None:
    engine = ScriptedEngine(max_model_len=32)
    limits = {"embedding_max_inputs": 2, "embedding_max_total_tokens": 50}
    with serving(loop_thread, engine, **limits) as (srv, _):
        refused = embed(srv.url, **body)
        assert refused.status_code == 400, refused.text
        assert message in refused.json()["error"]["message"]
        validate("ErrorResponse", refused.json())
    assert not engine.calls_of("embed")


def test_embeddings_have_their_own_concurrency_limit(loop_thread: LoopThread) -> None:
    """EMBEDDING_CONCURRENCY_LIMIT=1 and no queue: a second embedding request meanwhile is
    refused with Retry-After, while chat (its own limit) is served."""
    slow = ScriptedEngine(first_step_delay_s=1.0)
    limits = {"embedding_concurrency_limit": 1, "embedding_max_queue_size": 0}
    with serving(loop_thread, slow, **limits) as (srv, _):
        first: list[httpx.Response] = []
        worker = threading.Thread(target=lambda: first.append(embed(srv.url, input="a")))
        worker.start()
        wait_for(lambda: bool(slow.open_requests))
        second = embed(srv.url, input="b")
        chat = {"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}]}
        served = httpx.post(srv.url + "/v1/chat/completions", json=chat | {"max_tokens": 2})
        worker.join()
    assert first[0].status_code == 200 and served.status_code == 200
    assert second.status_code in (429, 503) and "Retry-After" in second.headers


def test_a_client_gone_aborts_every_input_and_gives_its_slot_back(
    loop_thread: LoopThread,
) -> None:
    slow = ScriptedEngine(first_step_delay_s=5.0)
    with serving(loop_thread, slow, embedding_concurrency_limit=1) as (srv, _):
        with pytest.raises(httpx.ReadTimeout):
            embed(srv.url, input=["a", "b", "c"], timeout=0.5)
        wait_for(lambda: not slow.open_requests)
        assert len(slow.calls_of("closed")) == 3
        slow.first_step_delay_s = 0.0
        assert embed(srv.url, input="d").status_code == 200  # the slot came back


def test_a_dead_deployment_fails_over_to_the_next(loop_thread: LoopThread, tmp_path: Path) -> None:
    document = {
        "models": [
            {"id": "tiny-llama", "deployments": [{"name": "gen", "kind": "local"}]},
            {
                "id": EMBED,
                "task": "embed",
                "deployments": [{"name": "e1", "kind": "local"}, {"name": "e2", "kind": "local"}],
            },
        ],
        "routing": {"strategy": "round_robin"},
    }
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    settings = make_settings()
    settings.routing = RoutingSettings(models_file=path)
    dying, alive = ScriptedEngine(die_after=0), ScriptedEngine()
    engines = {"gen": ScriptedEngine(), "e1": dying, "e2": alive}
    running = start_server(loop_thread, create_app(settings, local_engines=engines))
    try:
        answers = [embed(running.url, input="a") for _ in range(2)]
    finally:
        stop_server(running)
    assert [a.status_code for a in answers] == [200, 200]
    assert {a.headers["X-Deployment"] for a in answers} == {"e2"}
    assert dying.calls_of("embed")  # it was tried, and the request went on


def wait_for(condition: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.01)
