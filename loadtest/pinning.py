"""CPU placement and CPU accounting for the side-by-side benchmark (Linux).

Both servers run vLLM's engine core in a child process and the HTTP front end (API process)
in the parent. Left to the scheduler on a small machine, the front end and the benchmark
client land on the core where vLLM binds the engine's OpenMP thread: the engine stalls, and
one workload measured up to 2-3x apart in engine CPU time from run to run. So, with at least
two CPUs, :class:`CpuPlan` puts the API process and the client on the last CPU, the same way
for both servers, and leaves the engine core where vLLM put it (free to use every CPU: it
also runs socket and serialisation threads). Shutting the engine out of the front end's CPU
as well was measured and rejected for the engine benchmark: it made concurrency 1 and 8
slower for both servers. The proxy benchmark does shut it out (``pin_engine``): there the
front-end CPU holds a third process, the gateway, and an engine core scheduled onto it
starved all three for seconds at a time (see docs/benchmarks.md, "Proxy").

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

# Process names vLLM gives its engine core (/proc comm is cut at 15 characters).
ENGINE_CORE_NAMES = ("VLLM::EngineCor", "EngineCore")


@dataclass(frozen=True)
class CpuPlan:
    """The CPUs the API process and the client share; the engine core is left alone, or
    with ``pin_engine`` kept on the other CPUs (where vLLM binds the model's threads)."""

    frontend: frozenset[int]
    engine: frozenset[int] = frozenset()
    pin_engine: bool = False

    @classmethod
    def split(cls, cpus: Iterable[int] | None = None) -> CpuPlan | None:
        """The front end on the last CPU; None below two CPUs (nothing to separate)."""
        available = sorted(os.sched_getaffinity(0) if cpus is None else cpus)
        if len(available) < 2:
            return None
        return cls(frozenset(available[-1:]), frozenset(available[:-1]))

    def describe(self) -> str:
        engine = (
            f"engine core pinned to CPU {_cpu_list(self.engine)} (with the model's threads)"
            if self.pin_engine
            else "engine core placed by vLLM"
        )
        return (
            f"API process and benchmark client pinned to CPU {_cpu_list(self.frontend)}; "
            f"{engine}"
        )

    def pin_server(self, pid: int) -> None:
        """Pin a started server's processes to ``frontend``, except its engine core and
        the engine's own children (the model-running worker), every thread of each (a
        thread keeps the mask it started with); with ``pin_engine``, the engine core
        process to ``engine`` (its children are bound by vLLM already)."""
        for process in frontend_processes(pid):
            _pin_all_threads(process.pid, self.frontend)
        if self.pin_engine:
            for core in engine_cores(pid):
                _pin_all_threads(core, self.engine)

    def client_preexec(self) -> Callable[[], None]:
        """A ``preexec_fn`` that puts a client process on the front-end CPUs."""
        frontend = set(self.frontend)
        return lambda: os.sched_setaffinity(0, frontend)


def is_engine_core(process: psutil.Process) -> bool:
    with contextlib.suppress(psutil.Error):
        return process.name().startswith(ENGINE_CORE_NAMES)
    return False


def frontend_processes(pid: int) -> list[psutil.Process]:
    """The server and its descendants outside the engine core's process tree."""
    server = psutil.Process(pid)
    engine = set(_engine_tree(server))
    return [p for p in [server, *server.children(recursive=True)] if p.pid not in engine]


def engine_cores(pid: int) -> list[int]:
    """Pids of the server's engine-core processes (not their workers)."""
    with contextlib.suppress(psutil.Error):
        return [c.pid for c in psutil.Process(pid).children(recursive=True) if is_engine_core(c)]
    return []


def _engine_tree(server: psutil.Process) -> list[int]:
    """Pids of the engine core and everything it started (vLLM runs the model in a worker
    process under the engine core)."""
    pids: list[int] = []
    with contextlib.suppress(psutil.Error):
        for child in server.children(recursive=True):
            if is_engine_core(child):
                pids += [child.pid, *(c.pid for c in child.children(recursive=True))]
    return pids


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
        """API process CPU, and the engine core's with its worker processes."""
        api = _cpu_seconds(self._server)
        engine = 0.0
        for pid in _engine_tree(self._server):
            with contextlib.suppress(psutil.Error):
                engine += _cpu_seconds(psutil.Process(pid))
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
