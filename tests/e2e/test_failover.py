"""A real gateway process with two in-process engines of one model (``local-a`` and
``local-b`` from a MODELS_FILE): both serve; SIGKILL of one engine core with requests in
flight and queued sends the queued ones to the other at once, and the killed one is
re-admitted when its supervisor has restarted it; SIGHUP reloads the file. A MODELS_FILE
with mistakes stops start-up with one clear line.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.support.process import ROOT, GatewayProcess

pytestmark = pytest.mark.slow
STORY = [{"role": "user", "content": "Tell me a story"}]
TWO_ENGINES = {
    "models": [
        {
            "id": "tiny-llama",
            "deployments": [
                {"name": "local-a", "kind": "local"},
                {"name": "local-b", "kind": "local"},
            ],
        }
    ]
}


@pytest.fixture(scope="module")
def models_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = Path(tmp_path_factory.mktemp("models")) / "models.yaml"
    path.write_text(yaml.safe_dump(TWO_ENGINES), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def gateway(
    models_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    env = {
        "MODELS_FILE": str(models_file),
        "MODELS_RELOAD_S": "3600",  # only SIGHUP reloads, in these tests
        "CONCURRENCY_LIMIT": "4",
        "BREAKER_RESET_TIMEOUT_S": "2",
    }
    process = GatewayProcess(Path(tmp_path_factory.mktemp("gw")), env, name="failover")
    process.start()  # ready once one engine of the model is: wait for the second too
    started = time.monotonic()
    while not all(d["ready"] for d in deployments(process.url).values()):
        assert time.monotonic() - started < 300, "second engine never ready"
        time.sleep(0.5)
    yield process
    process.stop()


def chat(url: str, max_tokens: int = 8) -> httpx.Response:
    body = {"model": "tiny-llama", "messages": STORY, "max_tokens": max_tokens}
    return httpx.post(url + "/v1/chat/completions", json=body, timeout=60)


def deployments(url: str) -> dict[str, Any]:
    return dict(httpx.get(url + "/resilience/stats", timeout=10).json()["deployments"])


def test_two_engines_in_one_process_both_serve(gateway: GatewayProcess) -> None:
    served = Counter(chat(gateway.url).headers["x-deployment"] for _ in range(6))
    assert set(served) == {"local-a", "local-b"}, served


def totals_by_deployment(url: str, family: str) -> dict[str, float]:
    """One counter family from the gateway's scrape, summed per deployment label."""
    totals: dict[str, float] = {}
    text = httpx.get(url + "/metrics", timeout=10).text
    names = [f.name for f in text_string_to_metric_families(text)]
    assert len(names) == len(set(names)), "a family exposed twice"
    for found in text_string_to_metric_families(text):
        if found.name == family:
            for sample in found.samples:
                if sample.name == family + "_total":
                    name = sample.labels["deployment"]
                    totals[name] = totals.get(name, 0.0) + sample.value
    return totals


def test_each_engines_vllm_metrics_are_scraped_under_its_deployment(
    gateway: GatewayProcess,
) -> None:
    """vLLM alone keeps only the last-built engine's vllm:* in one process: here each
    engine's own counts come back, told apart by a deployment label."""
    before = totals_by_deployment(gateway.url, "vllm:request_success")
    assert set(before) == {"local-a", "local-b"}
    served = Counter(chat(gateway.url).headers["x-deployment"] for _ in range(6))
    want = {name: before[name] + served[name] for name in before}
    deadline = time.monotonic() + 10  # vLLM records a step's stats just after its outputs
    while (after := totals_by_deployment(gateway.url, "vllm:request_success")) != want:
        assert time.monotonic() < deadline, (after, want)
        time.sleep(0.1)


def _stream(url: str, out: dict[str, Any], streaming: threading.Barrier) -> None:
    body = {"model": "tiny-llama", "messages": STORY, "max_tokens": 100, "stream": True}
    body["ignore_eos"] = True
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=60) as response:
        out["deployment"] = response.headers.get("x-deployment")
        out["lines"] = []
        for line in response.iter_lines():
            if line.startswith("data: "):
                out["lines"].append(line)
                if len(out["lines"]) == 1:
                    streaming.wait(timeout=30)
    out["done"] = time.monotonic()


def _queued(url: str, out: dict[str, Any]) -> None:
    response = chat(url)
    out.update(status=response.status_code, deployment=response.headers.get("x-deployment"))
    out["at"] = time.monotonic()


def _watch_restart(url: str, before: dict[str, int], out: dict[str, Any]) -> None:
    """Record which deployment restarted and when it was ready again (polled every 50 ms)."""
    started = time.monotonic()
    while time.monotonic() - started < 120:
        for name, d in deployments(url).items():
            if d["restarts"] > before[name] and d["ready"]:
                out.update(name=name, at=time.monotonic())
                return
        time.sleep(0.05)


def test_killing_one_engine_sends_queued_requests_to_the_other(gateway: GatewayProcess) -> None:
    """Four streams fill the four slots, four requests queue behind them; SIGKILL one
    engine core. The queued requests are all served: by the other engine while the killed
    one is down (a forked core is back within seconds, so the later ones may be served by
    it again); the streams of the killed one are resumed on the other and finish too; after
    its restart it serves again. Prints kill → first queued request served elsewhere."""
    streams: list[dict[str, Any]] = [{} for _ in range(4)]
    queued: list[dict[str, Any]] = [{} for _ in range(4)]
    streaming = threading.Barrier(len(streams) + 1)  # every stream has its first token
    threads = [threading.Thread(target=_stream, args=(gateway.url, s, streaming)) for s in streams]
    for thread in threads:
        thread.start()
    streaming.wait(timeout=30)
    threads += [threading.Thread(target=_queued, args=(gateway.url, q)) for q in queued]
    for thread in threads[len(streams) :]:
        thread.start()
    time.sleep(0.3)  # the queued requests are in the queue
    back: dict[str, Any] = {}
    before = {name: d["restarts"] for name, d in deployments(gateway.url).items()}
    watcher = threading.Thread(target=_watch_restart, args=(gateway.url, before, back))
    gateway.engine_core().send_signal(signal.SIGKILL)
    killed = time.monotonic()
    watcher.start()
    for thread in threads:
        thread.join(timeout=60)
    watcher.join(timeout=130)
    assert back, "the killed engine was not restarted"
    dead, alive = back["name"], ({"local-a", "local-b"} - {back["name"]}).pop()
    assert {q["status"] for q in queued} == {200}
    while_down = [q for q in queued if q["at"] < back["at"]]
    assert while_down, f"every queued request waited for the restart ({back['at'] - killed:.1f}s)"
    assert {q["deployment"] for q in while_down} == {alive}, queued
    for stream in streams:
        last = json.loads(stream["lines"][-2][6:])  # the event before [DONE]
        assert last["choices"][0]["finish_reason"] == "length", last
    first_served = min(q["at"] for q in queued) - killed
    served = {chat(gateway.url).headers["x-deployment"] for _ in range(6)}
    assert served == {"local-a", "local-b"}
    restarts = totals_by_deployment(gateway.url, "gateway_engine_restarts")
    assert restarts.get(dead) == 1 and not restarts.get(alive), restarts
    # the restarted engine's vllm:* are scraped again, from its new registry
    assert set(totals_by_deployment(gateway.url, "vllm:request_success")) == {dead, alive}
    print(f"\nengine kill: first queued request served by {alive} {first_served:.2f}s after; "
          f"{dead} back after {back['at'] - killed:.1f}s; streams done after "
          f"{max(s['done'] for s in streams) - killed:.1f}s")  # fmt: skip


def test_sighup_reloads_the_models_file(gateway: GatewayProcess, models_file: Path) -> None:
    """With MODELS_RELOAD_S an hour, a changed file takes effect on SIGHUP, at once."""
    document = json.loads(json.dumps(TWO_ENGINES))
    document["models"][0]["aliases"] = ["hup"]
    models_file.write_text(yaml.safe_dump(document), encoding="utf-8")
    body = {"model": "hup", "prompt": "hi", "max_tokens": 2}
    assert httpx.post(gateway.url + "/v1/completions", json=body).status_code == 404
    gateway.signal(signal.SIGHUP)
    started = time.monotonic()
    while httpx.post(gateway.url + "/v1/completions", json=body).status_code != 200:
        assert time.monotonic() - started < 5, "SIGHUP did not reload"
        time.sleep(0.1)


def test_a_models_file_with_mistakes_stops_start_up_with_one_line(tmp_path: Path) -> None:
    """Exit status 2 and one line naming the file and the mistake; no engine started."""
    path = tmp_path / "models.yaml"
    path.write_text("models:\n  - id: m\n    deployments: [{name: a, kind: lcoal}]\n")
    done = subprocess.run(
        [sys.executable, "-m", "app"],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "MODELS_FILE": str(path), "LOG_JSON": "false"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if "MODELS_FILE" in line]
    assert len(errors) == 1 and "models[0].deployments[0]" in errors[0], done.stderr[-2000:]
