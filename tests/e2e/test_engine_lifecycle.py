"""A real gateway process: a stalled engine and a killed engine core are detected and
restarted; SIGTERM drains in-flight streams and exits 0.

The tests share one process and run in file order: stall, kill, drain (the last ends it).
"""

from __future__ import annotations

import http.client
import json
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.process import GatewayProcess

PROMPT = [{"role": "user", "content": "Tell me a story"}]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    env = {
        "ALLOW_FAULT_INJECTION": "true",
        "FAULT_INJECTION": json.dumps({"stall_requests": 1}),
        "ENGINE_STALL_S": "3",
        "SHUTDOWN_GRACE_S": "20",
    }
    process = GatewayProcess(Path(tmp_path_factory.mktemp("gw")), env, name="lifecycle")
    process.start()
    yield process
    process.stop()


def _chat(url: str, max_tokens: int = 32, timeout: float = 60) -> httpx.Response:
    body = {"model": "tiny-llama", "messages": PROMPT, "max_tokens": max_tokens}
    body["ignore_eos"] = True
    return httpx.post(url + "/v1/chat/completions", json=body, timeout=timeout)


def _stream(url: str, max_tokens: int, out: dict[str, Any]) -> None:
    body = {"model": "tiny-llama", "messages": PROMPT, "max_tokens": max_tokens, "stream": True}
    body["ignore_eos"] = True
    try:
        with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=60) as resp:
            out["status"] = resp.status_code
            out["events"] = [line for line in resp.iter_lines() if line.startswith("data: ")]
    except httpx.HTTPError as exc:
        out["error"] = repr(exc)
    out["ended"] = time.monotonic()


def _wait_status(url: str, path: str, status: int, timeout: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            if httpx.get(url + path, timeout=2).status_code == status:
                return time.monotonic() - started
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{path} never answered {status} within {timeout}s")


def test_stalled_engine_fails_requests_and_restarts(gateway: GatewayProcess) -> None:
    """A request stuck with no token for ENGINE_STALL_S gets 503; the engine restarts and
    readiness comes back."""
    started = time.monotonic()
    stalled = _chat(gateway.url)
    assert stalled.status_code == 503, stalled.text
    assert time.monotonic() - started < 15
    assert stalled.headers["Retry-After"]
    _wait_status(gateway.url, "/readyz", 200, timeout=240)
    assert _chat(gateway.url).status_code == 200
    stats = httpx.get(gateway.url + "/resilience/stats").json()
    assert stats["engine"]["restarts"] == 1 and "stall" in stats["engine"]["last_failure"]


def test_killed_engine_core_fails_fast_and_recovers(gateway: GatewayProcess) -> None:
    """SIGKILL of the engine core under streaming load: every affected request ends within
    seconds with a 503 (status or final SSE event), /readyz goes 503, then 200 after the
    automatic restart. Prints the measured recovery time."""
    results: list[dict[str, Any]] = [{} for _ in range(6)]
    threads = [threading.Thread(target=_stream, args=(gateway.url, 900, r)) for r in results]
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    core = gateway.engine_core()
    killed_at = time.monotonic()
    core.send_signal(signal.SIGKILL)
    for thread in threads:
        thread.join(timeout=30)
    assert all("ended" in r for r in results), results
    assert max(r["ended"] for r in results) - killed_at < 10
    outcomes = Counter(_outcome(r) for r in results)
    assert set(outcomes) <= {"503", "200+503-event"}, outcomes
    _wait_status(gateway.url, "/readyz", 503, timeout=5)
    recovery = _wait_status(gateway.url, "/readyz", 200, timeout=240)
    assert _chat(gateway.url).status_code == 200
    print(f"\nengine kill: outcomes={dict(outcomes)} ready again after {recovery:.1f}s")


def _outcome(result: dict[str, Any]) -> str:
    if result.get("status") != 200:
        return str(result.get("status"))
    last_data = [e for e in result["events"] if e != "data: [DONE]"][-1]
    code = json.loads(last_data[6:]).get("error", {}).get("code")
    return "200+503-event" if code == "engine_unavailable" else f"200 {code}"


def test_idle_pooled_connection_outlives_uvicorns_default_keep_alive(
    gateway: GatewayProcess,
) -> None:
    """One connection, two requests 6 s apart (uvicorn's own default closes idle
    connections after 5 s): the second request is answered on the same connection."""
    host, port = gateway.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", "/healthz")
        first = conn.getresponse()
        first.read()
        assert first.status == 200
        pooled = conn.sock
        time.sleep(6)
        # A connection the server closed meanwhile raises RemoteDisconnected here.
        conn.request("GET", "/healthz")
        second = conn.getresponse()
        second.read()
        assert second.status == 200 and conn.sock is pooled
    finally:
        conn.close()


def test_sigterm_drains_in_flight_then_exits_zero(gateway: GatewayProcess) -> None:
    """SIGTERM: /readyz turns 503 at once, new requests get 503 + Retry-After, the in-flight
    stream completes, and the process exits 0."""
    stream: dict[str, Any] = {}
    # 900 tokens: on a fast engine (~2 ms a token) a shorter stream drained, and the
    # process exited, before /readyz could be seen answering 503.
    thread = threading.Thread(target=_stream, args=(gateway.url, 900, stream))
    thread.start()
    time.sleep(0.5)
    gateway.signal(signal.SIGTERM)
    _wait_status(gateway.url, "/readyz", 503, timeout=2)
    refused = _chat(gateway.url, 4)
    assert refused.status_code == 503 and refused.headers["Retry-After"]
    assert refused.json()["error"]["code"] == "shutting_down"
    thread.join(timeout=60)
    assert stream["status"] == 200 and stream["events"][-1] == "data: [DONE]"
    assert '"finish_reason":"length"' in "".join(stream["events"])
    assert gateway.wait(timeout=60) == 0
