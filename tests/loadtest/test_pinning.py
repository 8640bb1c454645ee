"""CPU placement and CPU accounting for the benchmark, on real processes of this machine."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from loadtest.pinning import CpuMeter, CpuPlan, CpuSample, per_1k_tokens_ms


def test_split_puts_the_front_end_on_the_last_cpu() -> None:
    plan = CpuPlan.split([0, 1, 2, 3])
    assert plan == CpuPlan(frozenset({3}))
    assert plan.describe() == (
        "API process and benchmark client pinned to CPU 3; engine core placed by vLLM"
    )
    assert CpuPlan.split([5]) is None


def test_per_1k_tokens_is_cpu_ms_per_thousand_output_tokens() -> None:
    figures = per_1k_tokens_ms(CpuSample(1.0, 10.0), CpuSample(3.0, 14.0), 4000)
    assert figures == pytest.approx(
        {"api_cpu_ms_per_1k_tokens": 500.0, "engine_cpu_ms_per_1k_tokens": 1000.0}
    )
    assert per_1k_tokens_ms(CpuSample(0, 0), CpuSample(1, 1), 0) == {}


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2+ CPUs to split")
def test_pinning_moves_every_thread_of_a_server_and_the_meter_reads_its_cpu() -> None:
    """A real child process with threads is placed on the front-end CPU, every thread of
    it, and its burnt CPU time shows in the meter."""
    plan = CpuPlan.split()
    assert plan is not None
    script = (
        "import threading, time\n"
        "threading.Thread(target=time.sleep, args=(30,), daemon=True).start()\n"
        "end = time.process_time() + 0.3\n"
        "while time.process_time() < end: pass\n"
        "print('ready', flush=True); time.sleep(30)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        plan.pin_server(child.pid)
        tasks = os.listdir(f"/proc/{child.pid}/task")
        assert len(tasks) >= 2
        assert all(os.sched_getaffinity(int(tid)) == set(plan.frontend) for tid in tasks)
        assert CpuMeter(child.pid).sample().api_s >= 0.3
    finally:
        child.kill()
        child.wait()
