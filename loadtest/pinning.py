"""CPU placement and CPU accounting for the side-by-side benchmark (Linux).

Both servers run vLLM's engine core in a child process and the HTTP front end (API process)
in the parent. Left to the scheduler on a small machine, the front end and the benchmark
client land on the engine's core now and then: the engine's OpenMP thread stalls, and the
same workload measured 2-3x apart in engine CPU time from one run to the next. So, when
the machine has at least two CPUs, :class:`CpuPlan` gives the engine core every CPU but
the last and puts the API process and the client on the last one, the same way for both
servers (vLLM's CPU backend also reserves a core for its front end). Then the front end's
own cost shows up directly in throughput and latency instead of as noise.

:class:`CpuMeter` reads the CPU seconds the API process and the engine core used over one
concurrency level, which the report turns into "API process CPU per 1k output tokens":
the gateway's per-token overhead, measured without a stopwatch.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import psutil

ENGINE_CORE_NAMES = ("VLLM::EngineCor", "EngineCore")


@dataclass(frozen=True)
class CpuPlan:
    """Which CPUs the engine core gets and which the front end and client share."""

    engine: frozenset[int]
    frontend: frozenset[int]

    @classmethod
    def split(cls, cpus: Iterable[int] | None = None) -> CpuPlan | None:
        """Engine on all CPUs but the last, front end on the last; None below two CPUs."""
        available = sorted(os.sched_getaffinity(0) if cpus is None else cpus)
        if len(available) < 2:
            return None
        return cls(frozenset(available[:-1]), frozenset(available[-1:]))

    def describe(self) -> str:
        return (
            f"engine core on CPU {_cpu_list(self.engine)}; API process and benchmark client "
            f"on CPU {_cpu_list(self.frontend)}"
        )

    def pin_server(self, pid: int) -> None:
        """Place a started server: its engine core child on ``engine``, the rest on
        ``frontend`` (every thread, since a thread keeps the mask it started with)."""
        server = psutil.Process(pid)
        for process in [server, *server.children(recursive=True)]:
            cpus = self.engine if is_engine_core(process) else self.frontend
            _pin_all_threads(process.pid, cpus)

    def client_preexec(self) -> Callable[[], None]:
        """A ``preexec_fn`` that puts a client process on the front-end CPUs."""
        frontend = set(self.frontend)
        return lambda: os.sched_setaffinity(0, frontend)


def is_engine_core(process: psutil.Process) -> bool:
    with contextlib.suppress(psutil.Error):
        return process.name().startswith(ENGINE_CORE_NAMES)
    return False


def _pin_all_threads(pid: int, cpus: frozenset[int]) -> None:
    with contextlib.suppress(psutil.Error):
        for thread in psutil.Process(pid).threads():
            with contextlib.suppress(OSError):
                os.sched_setaffinity(thread.id, cpus)


def _cpu_list(cpus: frozenset[int]) -> str:
    return ",".join(str(cpu) for cpu in sorted(cpus))


@dataclass(frozen=True)
class CpuSample:
    api_s: float
    engine_s: float


class CpuMeter:
    """CPU seconds (user + system) of a server's API process and of its engine core."""

    def __init__(self, pid: int) -> None:
        self._server = psutil.Process(pid)

    def sample(self) -> CpuSample:
        api = _cpu_seconds(self._server)
        engine = 0.0
        with contextlib.suppress(psutil.Error):
            for child in self._server.children(recursive=True):
                if is_engine_core(child):
                    engine += _cpu_seconds(child)
        return CpuSample(api, engine)


def _cpu_seconds(process: psutil.Process) -> float:
    with contextlib.suppress(psutil.Error):
        times = process.cpu_times()
        return float(times.user + times.system)
    return 0.0


def per_1k_tokens_ms(before: CpuSample, after: CpuSample, output_tokens: int) -> dict[str, float]:
    """CPU milliseconds per 1,000 output tokens over one level, for the report."""
    if output_tokens <= 0:
        return {}
    scale = 1e6 / output_tokens  # seconds -> ms, per 1k tokens
    return {
        "api_cpu_ms_per_1k_tokens": (after.api_s - before.api_s) * scale,
        "engine_cpu_ms_per_1k_tokens": (after.engine_s - before.engine_s) * scale,
    }
