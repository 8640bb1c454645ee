"""Resumption at the seam, fast and deterministic: two in-process deployments on scripted
engines whose every token is pinned down by the tokens before it, so a continuation from
"prompt + tokens so far" must say exactly what an uninterrupted run says. The first
deployment dies mid-stream. (The same behaviours on real engines and a real second server:
tests/e2e/test_resume.py.)"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from app.main import create_app
from app.routing.settings import RoutingSettings
from tests.conftest import make_settings
from tests.support.scripted_engine import ScriptedEngine
from tests.support.servers import LoopThread, RunningServer, start_server, stop_server

STORY = [{"role": "user", "content": "Tell me a story"}]


@contextmanager
def two_deployments(
    loop: LoopThread, tmp_path: Path, die_after: int | None, **resilience: Any
) -> Iterator[tuple[RunningServer, ScriptedEngine, ScriptedEngine]]:
    """local-a (dies after ``die_after`` steps of its next request) then local-b."""
    a = ScriptedEngine(deterministic=True, die_after=die_after, step_delay_s=0.001)
    b = ScriptedEngine(deterministic=True, step_delay_s=0.001)
    names = [{"name": "local-a", "kind": "local"}, {"name": "local-b", "kind": "local"}]
    document = {
        "models": [{"id": "tiny-llama", "deployments": names}],
        "routing": {"strategy": "round_robin"},
    }
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    settings = make_settings(resilience=resilience)
    settings.routing = RoutingSettings(models_file=path)
    app = create_app(settings, local_engines={"local-a": a, "local-b": b})
    running = start_server(loop, app)
    try:
        yield running, a, b
    finally:
        stop_server(running)


def events(response: httpx.Response) -> list[Any]:
    data = [line[6:] for line in response.text.split("\n") if line.startswith("data: ")]
    assert data[-1] == "[DONE]" and data.count("[DONE]") == 1
    return [json.loads(item) for item in data[:-1]]


def stream_text(chunks: list[Any]) -> dict[int, str]:
    texts: dict[int, str] = {}
    for chunk in chunks:
        for choice in chunk["choices"]:
            texts[choice["index"]] = texts.get(choice["index"], "") + (
                choice["delta"].get("content") or ""
            )
    return texts


def chat(url: str, **body: Any) -> httpx.Response:
    payload = {"model": "tiny-llama", "messages": STORY, "max_tokens": 60, **body}
    return httpx.post(url + "/v1/chat/completions", json=payload, timeout=30)


def resumed(url: str) -> dict[str, float]:
    families = text_string_to_metric_families(httpx.get(url + "/metrics").text)
    counter = next(f for f in families if f.name == "gateway_resumed_requests")
    return {s.labels["outcome"]: s.value for s in counter.samples if s.name.endswith("_total")}


@pytest.fixture(scope="module")
def reference(loop_thread: LoopThread, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The uninterrupted answers, streamed and not."""
    with two_deployments(loop_thread, Path(tmp_path_factory.mktemp("ref")), None) as (srv, _, _):
        streamed = stream_text(
            events(chat(srv.url, stream=True, stream_options={"include_usage": True}))
        )
        body = chat(srv.url).json()
    return {"streamed": streamed[0], "body": body}


def test_a_stream_cut_after_ten_tokens_goes_on_elsewhere_token_exact(
    loop_thread: LoopThread, tmp_path: Path, reference: dict[str, Any]
) -> None:
    """local-a dies after 10 tokens: the client's stream continues on local-b with the next
    token — the same text as an uninterrupted run, one id, one finish_reason, one [DONE],
    usage counting every token once — and the resumption is counted."""
    with two_deployments(loop_thread, tmp_path, die_after=10) as (srv, _, b):
        before = resumed(srv.url)
        response = chat(srv.url, stream=True, stream_options={"include_usage": True})
        chunks = events(response)
        assert response.headers["x-deployment"] == "local-a"
        assert stream_text(chunks) == {0: reference["streamed"]}
        assert len({c["id"] for c in chunks}) == 1
        reasons = [
            ch["finish_reason"] for c in chunks for ch in c["choices"] if ch["finish_reason"]
        ]
        assert reasons == ["length"]
        assert chunks[-1]["usage"]["completion_tokens"] == 60
        assert resumed(srv.url)["resumed"] - before["resumed"] == 1
        continuation = b.calls_of("generate")[0][2]
        assert continuation.max_tokens == 50 and continuation.n == 1
        stats = httpx.get(srv.url + "/resilience/stats").json()["deployments"]
        assert stats["local-a"]["outcomes"] == {"resumed_away": 1}


def test_a_non_streamed_answer_resumes_invisibly(
    loop_thread: LoopThread, tmp_path: Path, reference: dict[str, Any]
) -> None:
    with two_deployments(loop_thread, tmp_path, die_after=25) as (srv, _, _):
        body = chat(srv.url).json()
    assert (
        body["choices"][0]["message"]["content"]
        == reference["body"]["choices"][0]["message"]["content"]
    )
    assert body["usage"] == reference["body"]["usage"]


def test_every_choice_of_n_resumes_at_its_own_seam(
    loop_thread: LoopThread, tmp_path: Path, reference: dict[str, Any]
) -> None:
    """n=2 (temperature 1): both choices continue, each as its own continuation, each with
    its own index and finish_reason, and with logprobs for every token on both sides."""
    with two_deployments(loop_thread, tmp_path, die_after=7) as (srv, _, b):
        response = chat(srv.url, stream=True, n=2, temperature=1.0, logprobs=True, top_logprobs=2)
        chunks = events(response)
    assert stream_text(chunks) == {0: reference["streamed"], 1: reference["streamed"]}
    assert [job[2].n for job in b.calls_of("generate")] == [1, 1]
    tokens = [
        lp
        for c in chunks
        for ch in c["choices"]
        if ch["logprobs"]
        for lp in ch["logprobs"]["content"]
    ]
    assert len(tokens) == 2 * 60


@pytest.mark.parametrize(
    ("body", "resilience", "reason"),
    [
        ({"response_format": {"type": "json_object"}}, {}, "structured output"),
        ({}, {"resume_attempts": 0}, "RESUME_ATTEMPTS (0) spent"),
    ],
)
def test_a_request_that_cannot_resume_says_why_in_its_final_event(
    loop_thread: LoopThread,
    tmp_path: Path,
    body: dict[str, Any],
    resilience: dict[str, Any],
    reason: str,
) -> None:
    """Structured output, or no resumption allowed: today's final SSE error event, whose
    message says why the stream was not resumed."""
    with two_deployments(loop_thread, tmp_path, die_after=5, **resilience) as (srv, _, _):
        before = resumed(srv.url)
        chunks = events(chat(srv.url, stream=True, **body))
        after = resumed(srv.url)
    error = chunks[-1]["error"]
    assert error["code"] == "engine_unavailable" and reason in error["message"], error
    assert after["not_resumable"] - before["not_resumable"] == 1
    assert after["resumed"] == before["resumed"]
