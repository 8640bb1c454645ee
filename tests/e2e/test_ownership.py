"""Nothing a request takes outlives the client that asked for it (issue 11).

A real gateway process with one engine slot (CONCURRENCY_LIMIT=1), a short stall
threshold and a short deadline. Clients hang up while queued, before the first byte and
after it, and one never reads its stream. After each, ``/resilience/stats`` and
``/auth/info`` show nothing held, the next request is served at once, and the engine was
never restarted (a slow reader is not a stalled engine).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.process import GatewayProcess
from tests.support.raw_http import open_unread, send_and_hang_up

pytestmark = pytest.mark.slow

KEY = "sk-owner-0123456789abcdef0123"
HEADERS = {"Authorization": f"Bearer {KEY}"}
STORY = [{"role": "user", "content": "Tell me a story"}]
REQUEST_TIMEOUT_S = 8
LONG_STREAM = {"model": "tiny-llama", "messages": STORY, "max_tokens": 900, "stream": True}
LONG_STREAM |= {"ignore_eos": True}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    env = {
        "CONCURRENCY_LIMIT": "1",
        "ENGINE_STALL_S": "2",
        "REQUEST_TIMEOUT_S": str(REQUEST_TIMEOUT_S),
        "ENABLE_AUTH": "true",
        "API_KEYS": KEY,
        "ADMIN_ROUTES_REQUIRE_KEY": "false",
    }
    process = GatewayProcess(Path(tmp_path_factory.mktemp("own")), env, name="ownership")
    process.start()
    yield process
    process.stop()


def held(gateway: GatewayProcess) -> dict[str, Any]:
    stats = httpx.get(gateway.url + "/resilience/stats", timeout=10).json()
    info = httpx.get(gateway.url + "/auth/info", headers=HEADERS, timeout=10).json()
    return {
        "slots": stats["queue"]["in_flight"],
        "queued": stats["queue"]["queued"],
        "engine": stats["engine"]["unfinished_requests"],
        "key": info["in_flight"],
        "restarts": stats["engine"]["restarts"],
    }


NOTHING_HELD = {"slots": 0, "queued": 0, "engine": 0, "key": 0, "restarts": 0}


def wait_released(gateway: GatewayProcess, timeout: float) -> float:
    """Seconds until nothing is held; fails with what is still held after ``timeout``."""
    started = time.monotonic()
    while (state := held(gateway)) != NOTHING_HELD:
        assert time.monotonic() - started < timeout, state
        time.sleep(0.05)
    return time.monotonic() - started


def served_at_once(gateway: GatewayProcess) -> None:
    body = {"model": "tiny-llama", "messages": STORY, "max_tokens": 4}
    started = time.monotonic()
    response = httpx.post(
        gateway.url + "/v1/chat/completions", json=body, headers=HEADERS, timeout=30
    )
    assert response.status_code == 200, response.text
    assert time.monotonic() - started < 2.0


@contextlib.contextmanager
def blocker(gateway: GatewayProcess) -> Iterator[None]:
    """Holds the one slot with a stream it reads slowly, until the block exits."""
    stop = threading.Event()

    def run() -> None:
        with httpx.stream(
            "POST",
            gateway.url + "/v1/chat/completions",
            json=LONG_STREAM,
            headers=HEADERS,
            timeout=60,
        ) as response:
            for _ in response.iter_lines():
                if stop.is_set():
                    return
                time.sleep(0.01)

    thread = threading.Thread(target=run)
    thread.start()
    time.sleep(0.5)
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=30)


def test_a_client_that_hangs_up_while_queued_holds_nothing(gateway: GatewayProcess) -> None:
    """Queued behind a running stream, a client gives up after 0.5 s: it leaves the queue
    at once, and when the stream ends the slot is free for the next request."""
    body = {"model": "tiny-llama", "messages": STORY, "max_tokens": 4}
    with blocker(gateway):
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(
                gateway.url + "/v1/chat/completions", json=body, headers=HEADERS, timeout=0.5
            )
        time.sleep(0.2)
        assert held(gateway)["queued"] == 0
    wait_released(gateway, timeout=5)
    served_at_once(gateway)


def test_a_client_that_hangs_up_before_the_first_byte_holds_nothing(
    gateway: GatewayProcess,
) -> None:
    """A client that sends a long stream request and closes before any answer frees its
    slot, key slot and engine request."""
    send_and_hang_up(gateway.url, "/v1/chat/completions", LONG_STREAM, HEADERS)
    assert wait_released(gateway, timeout=5) < 5
    served_at_once(gateway)


def test_a_client_that_hangs_up_after_the_first_bytes_holds_nothing(
    gateway: GatewayProcess,
) -> None:
    """A client that reads three events of a long stream and closes frees everything."""
    with httpx.stream(
        "POST", gateway.url + "/v1/chat/completions", json=LONG_STREAM, headers=HEADERS
    ) as response:
        lines = response.iter_lines()
        for _ in range(3):
            next(lines)
    assert wait_released(gateway, timeout=5) < 5
    served_at_once(gateway)


def test_a_client_that_never_reads_is_bounded_by_the_request_timeout(
    gateway: GatewayProcess,
) -> None:
    """Eight choices of 1000 tokens with their top-20 logprobs (~12 MB, past every socket
    buffer), to a socket that never reads, block the gateway's writes: REQUEST_TIMEOUT_S
    (8 s) frees the slot while the socket is still open, and the stall watchdog
    (ENGINE_STALL_S=2) did not take the stuck reader for a stalled engine."""
    body = {**LONG_STREAM, "max_tokens": 1000, "n": 8, "logprobs": True, "top_logprobs": 20}
    started = time.monotonic()
    sock = open_unread(gateway.url, "/v1/chat/completions", body, HEADERS)
    try:
        released = wait_released(gateway, timeout=REQUEST_TIMEOUT_S + 6)
        held_for = time.monotonic() - started
        # Held until the deadline, not to the end of generation: the reader really was stuck.
        assert REQUEST_TIMEOUT_S - 1.5 <= held_for <= REQUEST_TIMEOUT_S + 4, (held_for, released)
        served_at_once(gateway)
    finally:
        sock.close()
