"""``gateway_event_loop_stall_seconds_total``: a real app whose event loop is held up (a
blocking call on it, as a starved CPU does) counts the stall in /metrics."""

from __future__ import annotations

import time

import httpx
from prometheus_client.parser import text_string_to_metric_families

from app.main import create_app
from tests.conftest import make_settings
from tests.support.scripted_engine import ScriptedEngine
from tests.support.servers import LoopThread, start_server, stop_server


def _stalled_s(url: str) -> float:
    text = httpx.get(url + "/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        if family.name == "gateway_event_loop_stall_seconds":
            return sum(s.value for s in family.samples if s.name.endswith("_total"))
    raise AssertionError("gateway_event_loop_stall_seconds_total is not exported")


def test_a_blocked_event_loop_is_counted_as_stall(loop_thread: LoopThread) -> None:
    running = start_server(loop_thread, create_app(make_settings(), ScriptedEngine()))
    try:
        time.sleep(0.2)  # a few ticks of the monitor, unhindered
        before = _stalled_s(running.url)
        loop_thread.loop.call_soon_threadsafe(time.sleep, 0.6)
        time.sleep(0.8)
        after = _stalled_s(running.url)
    finally:
        stop_server(running)
    assert 0.4 <= after - before <= 1.0  # the 0.6 s block, less the monitor's 20 ms slack
