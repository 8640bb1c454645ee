"""Streams that survive their deployment, on real parts: a gateway process with an
in-process engine (``local-a``) and vLLM's own server as a second process (``vllm-b``,
``resume: tokens``). A stream is read for a while, then whichever deployment serves it is
SIGKILLed (the engine core, or the whole vLLM server); the client's stream must go on, on
the other one, token for token.

Greedy requests must equal an uninterrupted run. A seeded sampling request cannot: vLLM
draws from a per-request generator whose state after N tokens cannot be handed to another
engine, so the continuation is seeded ``seed + N`` (reproducible for the same seam) and the
test checks the part before the seam, the length, one ``[DONE]`` and the usage instead.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from openai import OpenAI

from app.engine.faults import FaultInjectingEngine, FaultPlan
from app.engine.manager import EngineManager
from app.main import create_app
from app.routing.settings import RoutingSettings
from loadtest.servers import ServerProcess
from tests.conftest import make_settings
from tests.support.process import GatewayProcess
from tests.support.servers import LoopThread, start_server, stop_server
from tests.support.upstreams import MODEL_DIR, broken_upstream, vllm_server

pytestmark = pytest.mark.slow
STORY = [{"role": "user", "content": "Tell me a story"}]
GREEDY = {"temperature": 0, "ignore_eos": True}


@pytest.fixture(scope="module")
def vllm_b(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = vllm_server(Path(tmp_path_factory.mktemp("vllm")))
    server.start()
    try:
        server.wait_ready(300)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def gateway(
    vllm_b: ServerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    work = Path(tmp_path_factory.mktemp("resume"))
    remote = {"name": "vllm-b", "kind": "openai", "base_url": f"{vllm_b.base_url}/v1"}
    remote |= {"resume": "tokens", "health": {"interval_s": 0.5, "failures": 1}}
    document = {
        "models": [
            {"id": "tiny-llama", "deployments": [{"name": "local-a", "kind": "local"}, remote]}
        ],
        "routing": {"strategy": "round_robin"},
    }
    (work / "models.yaml").write_text(yaml.safe_dump(document), encoding="utf-8")
    env = {"MODELS_FILE": str(work / "models.yaml"), "BREAKER_RESET_TIMEOUT_S": "1"}
    process = GatewayProcess(work, env, name="resume")
    process.start()
    wait_both_up(process)
    yield process
    process.stop()


def deployments(gateway: GatewayProcess) -> dict[str, Any]:
    return dict(httpx.get(gateway.url + "/resilience/stats", timeout=10).json()["deployments"])


def wait_both_up(gateway: GatewayProcess, timeout: float = 300) -> None:
    started = time.monotonic()
    while not all(
        d["status"] == "up" and d.get("ready", True) for d in deployments(gateway).values()
    ):
        assert time.monotonic() - started < timeout, deployments(gateway)
        time.sleep(0.5)


def kill(name: str, gateway: GatewayProcess, vllm_b: ServerProcess) -> None:
    """SIGKILL the deployment ``name``: the gateway's engine core, or vLLM's whole server."""
    if name == "local-a":
        gateway.engine_core().send_signal(signal.SIGKILL)
    else:
        assert vllm_b.proc is not None
        os.killpg(vllm_b.proc.pid, signal.SIGKILL)


def revive(name: str, gateway: GatewayProcess, vllm_b: ServerProcess) -> None:
    if name == "vllm-b":
        vllm_b.stop()
        vllm_b.start()
        vllm_b.wait_ready(300)
    wait_both_up(gateway)  # the engine core comes back by itself (supervisor)


def reference(gateway: GatewayProcess, session: str | None = None, **body: Any) -> dict[str, Any]:
    """The same request run without a failure (non-streamed): by either deployment, or by
    the one a session pins."""
    payload = {"model": "tiny-llama", "messages": STORY, **body}
    headers = {"X-Session-ID": session} if session else {}
    response = httpx.post(
        gateway.url + "/v1/chat/completions", json=payload, headers=headers, timeout=120
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


def killed_stream(
    gateway: GatewayProcess,
    vllm_b: ServerProcess,
    after: int,
    session: str | None = None,
    **body: Any,
) -> tuple[list[Any], str, float]:
    """Stream ``body``, SIGKILL its deployment after ``after`` events; the events, who
    served first, and the longest gap between two events (the seam's cost)."""
    payload = {"model": "tiny-llama", "messages": STORY, "stream": True, **body}
    headers = {"X-Session-ID": session} if session else {}
    events, gaps, last = [], [0.0], time.monotonic()
    url = gateway.url + "/v1/chat/completions"
    with httpx.stream("POST", url, json=payload, headers=headers, timeout=120) as r:
        served = r.headers["x-deployment"]
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            now = time.monotonic()
            gaps.append(now - last)
            last = now
            events.append(line[6:])
            if len(events) == after:
                kill(served, gateway, vllm_b)
    revive(served, gateway, vllm_b)
    assert events[-1] == "[DONE]" and events.count("[DONE]") == 1
    return [json.loads(e) for e in events[:-1]], served, max(gaps[after:])


def texts(chunks: list[Any]) -> dict[int, str]:
    out: dict[int, str] = {}
    for chunk in chunks:
        assert "error" not in chunk, [chunk, chunks[-3:], len(chunks)]
        for choice in chunk["choices"]:
            out[choice["index"]] = out.get(choice["index"], "") + (
                choice["delta"].get("content") or ""
            )
    return out


def finishes(chunks: list[Any]) -> list[tuple[int, str]]:
    return [
        (c["index"], c["finish_reason"])
        for ch in chunks
        for c in ch["choices"]
        if c["finish_reason"]
    ]


def test_a_greedy_stream_continues_token_for_token_through_the_openai_sdk(
    gateway: GatewayProcess, vllm_b: ServerProcess
) -> None:
    """400 greedy tokens through the official SDK; SIGKILL of the serving deployment after
    ~100: the SDK sees no exception and the text equals the uninterrupted run's; one id,
    usage counting 400 tokens once. Prints the seam's extra latency."""
    expected = reference(gateway, max_tokens=400, **GREEDY)["choices"][0]["message"]["content"]
    client = OpenAI(base_url=gateway.url + "/v1", api_key="k", max_retries=0, timeout=120)
    with client.chat.completions.with_streaming_response.create(
        model="tiny-llama", messages=STORY, max_tokens=400, stream=True,  # type: ignore[arg-type]
        stream_options={"include_usage": True}, temperature=0, extra_body={"ignore_eos": True},
    ) as response:  # fmt: skip
        served = response.headers["x-deployment"]
        parts, ids, usage, started = [], set(), None, time.monotonic()
        gaps, last = [], started
        for count, chunk in enumerate(response.parse()):
            now = time.monotonic()
            gaps.append(now - last)
            last = now
            ids.add(chunk.id)
            usage = chunk.usage or usage
            parts += [c.delta.content or "" for c in chunk.choices]
            if count == 100:
                kill(served, gateway, vllm_b)
    revive(served, gateway, vllm_b)
    assert "".join(parts) == expected
    assert len(ids) == 1 and usage is not None and usage.completion_tokens == 400
    seam_ms = max(gaps[100:]) * 1000
    print(f"\nresume: {served} killed at ~100 tokens; longest gap after the kill {seam_ms:.0f} ms")


def test_a_stop_string_across_the_seam_still_stops(
    loop_thread: LoopThread, engine: EngineManager, vllm_b: ServerProcess, tmp_path: Path
) -> None:
    """A 250-character stop string that begins at token 20 of the uninterrupted text and
    ends past token 40, where the serving engine dies (injected at the engine seam, exactly
    there; a SIGKILL cannot be aimed so well: vLLM holds back a stop string's length of
    text, so the client cannot tell where the engine is). The stream resumes on vLLM's
    server and ends exactly before the stop string, finish_reason stop."""
    plan = FaultPlan(die_requests=0, die_after_steps=40)
    dying = FaultInjectingEngine(engine, plan)
    remote = {"name": "vllm-b", "kind": "openai", "base_url": f"{vllm_b.base_url}/v1"}
    remote["resume"] = "tokens"
    models = [{"id": "tiny-llama", "deployments": [{"name": "local-a", "kind": "local"}, remote]}]
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump({"models": models, "routing": {"strategy": "round_robin"}}))
    settings = make_settings()
    settings.routing = RoutingSettings(models_file=path)
    server = start_server(loop_thread, create_app(settings, local_engines={"local-a": dying}))
    try:
        url = server.url + "/v1/chat/completions"
        base = {"model": "tiny-llama", "messages": STORY, **GREEDY}

        def text(max_tokens: int, **extra: Any) -> str:
            body = {**base, "max_tokens": max_tokens, **extra}
            return str(
                httpx.post(url, json=body, timeout=60).json()["choices"][0]["message"]["content"]
            )

        full, start = text(300), len(text(20))
        stop = full[start : start + 250]
        assert len(text(40)) < start + 250  # the stop string does end after the seam
        if httpx.post(url, json={**base, "max_tokens": 1}).headers["x-deployment"] != "vllm-b":
            httpx.post(url, json={**base, "max_tokens": 1})  # round robin: local-a is next
        plan.die_requests = 1
        body = {**base, "max_tokens": 300, "stop": [stop], "stream": True}
        response = httpx.post(url, json=body, timeout=60)
    finally:
        stop_server(server)
    assert response.headers["x-deployment"] == "local-a"
    data = [line[6:] for line in response.text.split("\n") if line.startswith("data: ")]
    chunks = [json.loads(item) for item in data[:-1]]
    assert texts(chunks) == {0: full[:start]}
    assert finishes(chunks) == [(0, "stop")]
    assert plan.die_requests == 0  # the engine did die under it


def test_logprobs_cross_the_seam(gateway: GatewayProcess, vllm_b: ServerProcess) -> None:
    """Every token keeps its logprob and top-2 alternatives on both sides of the seam."""
    body = {"max_tokens": 200, "logprobs": True, "top_logprobs": 2, **GREEDY}
    expected = reference(gateway, **body)
    chunks, _, _ = killed_stream(gateway, vllm_b, 50, **body)
    entries = [
        e for ch in chunks for c in ch["choices"] if c["logprobs"] for e in c["logprobs"]["content"]
    ]
    assert texts(chunks) == {0: expected["choices"][0]["message"]["content"]}
    assert len(entries) == 200 and all(len(e["top_logprobs"]) == 2 for e in entries)
    want = [e["token"] for e in expected["choices"][0]["logprobs"]["content"]]
    assert [e["token"] for e in entries] == want


def test_n_seeded_choices_each_continue(gateway: GatewayProcess, vllm_b: ServerProcess) -> None:
    """n=2 with temperature 0.8 and a seed: both choices reach 200 tokens with one finish
    each; before the seam each equals the uninterrupted seeded run on the same deployment
    (a session pins both there; see the module docstring for after the seam)."""
    body = {"max_tokens": 200, "n": 2, "temperature": 0.8, "seed": 11, "ignore_eos": True}
    expected = reference(gateway, session="seeded", **body)
    body["stream_options"] = {"include_usage": True}
    chunks, _, _ = killed_stream(gateway, vllm_b, 30, session="seeded", **body)
    assert sorted(finishes(chunks)) == [(0, "length"), (1, "length")]
    assert chunks[-1]["usage"]["completion_tokens"] == 400
    before_kill = texts(chunks[:29])  # what the client had when the kill was sent
    for choice in expected["choices"]:
        assert choice["message"]["content"].startswith(before_kill[choice["index"]])
    assert all(len(text) > 0 for text in before_kill.values())


def test_a_deployment_that_cannot_resume_ends_with_todays_error_event(
    loop_thread: LoopThread, engine: EngineManager, tmp_path: Path
) -> None:
    """An upstream sent the request as text (``send: request``: it says no token ids) drops
    its stream after three tokens: with no way to know what was said in tokens, the stream
    ends with the final SSE error event, which says why it was not resumed."""
    mode = {"how": "partial"}
    upstream = start_server(loop_thread, broken_upstream(mode))
    try:
        spec = {
            "name": "flaky",
            "kind": "openai",
            "base_url": f"{upstream.url}/v1",
            "send": "request",
        }
        models = [{"id": "m", "deployments": [spec, {"name": "local-a", "kind": "local"}],
                   "context_length": 1024, "tokenizer": str(MODEL_DIR)}]  # fmt: skip
        path = tmp_path / "models.yaml"
        path.write_text(yaml.safe_dump({"models": models}), encoding="utf-8")
        settings = make_settings()
        settings.routing = RoutingSettings(models_file=path)
        app = create_app(settings, local_engines={"local-a": engine})
        server = start_server(loop_thread, app)
        try:
            body = {"model": "m", "prompt": "hi", "max_tokens": 20, "stream": True}
            response = httpx.post(server.url + "/v1/completions", json=body, timeout=30)
        finally:
            stop_server(server)
    finally:
        stop_server(upstream)
    data = [line[6:] for line in response.text.split("\n") if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    error = json.loads(data[-2])["error"]
    assert "did not say which tokens it sent" in error["message"], error
