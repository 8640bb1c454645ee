"""CPU placement and CPU accounting for the benchmark, on real processes of this machine."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace

import psutil
import pytest

from loadtest.pinning import CpuMeter, CpuPlan, CpuSample, per_1k_tokens_ms


def test_split_puts_the_front_end_on_the_last_cpu() -> None:
    plan = CpuPlan.split([0, 1, 2, 3])
    assert plan == CpuPlan(frozenset({3}), frozenset({0, 1, 2}))
    assert plan.describe() == (
        "API process and benchmark client pinned to CPU 3; engine core placed by vLLM"
    )
    assert replace(plan, pin_engine=True).describe() == (
        "API process and benchmark client pinned to CPU 3; engine core pinned to CPU 0,1,2 "
        "(with the model's threads)"
    )
    assert CpuPlan.split([5]) is None


def test_per_1k_tokens_is_cpu_ms_per_thousand_output_tokens() -> None:
    figures = per_1k_tokens_ms(CpuSample(1.0, 10.0), CpuSample(3.0, 14.0), 4000)
    assert figures == pytest.approx(
        {"api_cpu_ms_per_1k_tokens": 500.0, "engine_cpu_ms_per_1k_tokens": 1000.0}
    )
    assert per_1k_tokens_ms(CpuSample(0, 0), CpuSample(1, 1), 0) == {}


ENGINE_SCRIPT = """
import ctypes, subprocess, sys, time
ctypes.CDLL(None).prctl(15, b"VLLM::EngineCor", 0, 0, 0)  # PR_SET_NAME, as vLLM names it
worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
print(worker.pid, flush=True)
time.sleep(60)
"""

SERVER_SCRIPT = f"""
import subprocess, sys, threading, time
threading.Thread(target=time.sleep, args=(60,), daemon=True).start()
engine = subprocess.Popen([sys.executable, "-c", {ENGINE_SCRIPT!r}], stdout=subprocess.PIPE)
worker = engine.stdout.readline().decode().strip()
end = time.process_time() + 0.3
while time.process_time() < end:
    pass
print(engine.pid, worker, flush=True)
time.sleep(60)
"""


def _affinity(pid: int) -> set[int]:
    return os.sched_getaffinity(pid)


# One CPU leaves nothing to split (CpuPlan.split gives None and the bench does not pin);
# any machine or container with two or more CPUs runs it, CI's included.
@pytest.mark.skipif(
    len(os.sched_getaffinity(0)) < 2, reason="needs 2+ CPUs; runs wherever 2 or more are available"
)
def test_pinning_moves_the_front_end_and_leaves_the_engine_tree_alone() -> None:
    """A real process tree shaped like a server: every thread of the API process goes to
    the front-end CPU; the engine core and its worker keep their CPUs (with ``pin_engine``
    the core goes to the other CPUs, its worker is left to vLLM); the meter reads the API
    process's CPU time."""
    plan = CpuPlan.split()
    assert plan is not None
    everything = _affinity(0)
    server = subprocess.Popen([sys.executable, "-c", SERVER_SCRIPT], stdout=subprocess.PIPE)
    try:
        assert server.stdout is not None
        engine_pid, worker_pid = map(int, server.stdout.readline().split())
        plan.pin_server(server.pid)
        tasks = os.listdir(f"/proc/{server.pid}/task")
        assert len(tasks) >= 2
        assert all(_affinity(int(tid)) == set(plan.frontend) for tid in tasks)
        assert _affinity(engine_pid) == everything and _affinity(worker_pid) == everything
        sample = CpuMeter(server.pid).sample()
        assert sample.api_s >= 0.3 and sample.engine_s >= 0.0
        replace(plan, pin_engine=True).pin_server(server.pid)  # the proxy benchmark's plan
        assert _affinity(engine_pid) == set(plan.engine) and _affinity(worker_pid) == everything
    finally:
        for child in psutil.Process(server.pid).children(recursive=True):
            child.kill()
        server.kill()
        server.wait()
