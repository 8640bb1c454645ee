"""Profile engine start-up and recovery: ``python -m loadtest.startup`` (``profile-startup``).

Starts ``python -m app`` (the settings a new user gets, plus ``--env KEY=VALUE``), stamps
every log line as it is written, and watches the process tree, then prints when each phase
of start-up ended:

- ``gateway listening``: ``/healthz`` answers (the API process imported what it needs);
- ``engine-core process``: vLLM's ``EngineCore`` child exists;
- ``engine-core imported``: the child logged ``Initializing a V1 LLM engine`` (a spawned
  child has re-imported torch and vLLM by then; a forked one inherits them);
- ``worker loading``: the worker started loading the model (``Starting to load model``);
- ``KV cache + profile``: vLLM's ``init engine (profile, create kv cache, warmup model)``;
- ``ready``: ``/readyz`` answers 200.

Then it SIGKILLs the engine core (``--kills`` times) and reports the same phases of the
restart, from the kill, and the resident memory (RSS) of the gateway and all its children
when ready. Last, it SIGTERMs the gateway and reports how long the exit took, its status and
whether any process of its group outlived it. Run it under ``flock /tmp/engine.lock``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from loadtest.servers import ROOT, ServerProcess, free_port, gateway_argv, http_status

# Log text that ends a phase (the first line containing it, after the phase's origin).
LOG_MARKERS = (
    ("engine-core imported", "Initializing a V1 LLM engine"),
    ("worker loading", "Starting to load model"),
    ("KV cache + profile", "init engine (profile, create kv cache"),
)
POLL_S = 0.05


@dataclass
class Timeline:
    """Phase name -> seconds since the origin (the process start, or the kill)."""

    origin: float
    marks: dict[str, float] = field(default_factory=dict)

    def mark(self, name: str, at: float | None = None) -> None:
        if name not in self.marks:
            self.marks[name] = round((time.monotonic() if at is None else at) - self.origin, 2)

    def rows(self) -> list[tuple[str, float, float]]:
        """(phase, seconds since origin, seconds since the phase before), in time order."""
        out, before = [], 0.0
        for name, at in sorted(self.marks.items(), key=lambda item: item[1]):
            out.append((name, at, round(at - before, 2)))
            before = at
        return out


class LogWatcher:
    """Reads the server log as it grows, stamping each line with the time it was seen."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _follow(self) -> None:
        while not self.path.exists() and not self._stop.is_set():
            time.sleep(POLL_S)
        with self.path.open("r", errors="replace") as log:
            pending = ""
            while not self._stop.is_set():
                chunk = log.read()
                if not chunk:
                    time.sleep(POLL_S / 2)
                    continue
                now = time.monotonic()
                pending += chunk
                *complete, pending = pending.split("\n")
                self.lines.extend((now, line) for line in complete)

    def first(self, text: str, since: float) -> float | None:
        return next((at for at, line in list(self.lines) if at >= since and text in line), None)


def tree(pid: int) -> list[psutil.Process]:
    """The process and its live descendants."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def engine_cores(pid: int) -> list[psutil.Process]:
    """Live children that are engine cores: named so once vLLM has set its title, or (a
    spawned one, still importing) any other interpreter but multiprocessing's tracker."""
    found = []
    for proc in tree(pid)[1:]:
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if "EngineCor" in proc.name() or "resource_tracker" not in " ".join(proc.cmdline()):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def memory(pid: int) -> dict[str, float]:
    """RSS of the gateway and of all its children (MiB), and USS of the whole tree (memory
    no other process shares: what the tree really costs)."""
    rss, uss, children = 0, 0, 0
    for index, proc in enumerate(tree(pid)):
        try:
            info = proc.memory_full_info()
        except psutil.Error:
            continue
        rss += info.rss
        uss += info.uss
        children += info.rss if index else 0
    mib = 1024**2
    return {
        "rss_mib": round(rss / mib),
        "children_rss_mib": round(children / mib),
        "uss_mib": round(uss / mib),
    }


def watch(
    server: ServerProcess,
    log: LogWatcher,
    timeline: Timeline,
    timeout_s: float,
    old_cores: set[int],
) -> None:
    """Mark phases until ``/readyz`` answers 200 (or raise after ``timeout_s``); after a
    kill (``old_cores``), only once it has answered something else (the death noticed)."""
    assert server.proc is not None
    deadline = timeline.origin + timeout_s
    noticed = not old_cores
    restarts = _engine_stats(server).get("restarts")
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"gateway exited ({server.proc.returncode})\n{server.log_tail()}")
        if (
            not old_cores
            and "gateway listening" not in timeline.marks
            and _answers(server, "/healthz")
        ):
            timeline.mark("gateway listening")
        if any(core.pid not in old_cores for core in engine_cores(server.proc.pid)):
            timeline.mark("engine-core process")
        for name, text in LOG_MARKERS:
            seen = log.first(text, timeline.origin)
            if seen is not None:
                timeline.mark(name, seen)
        ready = _answers(server, "/readyz")
        if not ready and not noticed:
            noticed = True
            timeline.mark("not ready (noticed)")
        if old_cores and _engine_stats(server).get("restarts") != restarts:
            noticed = True  # a standby swap can be over before /readyz shows it
            timeline.mark("engine replaced")
        if ready and noticed:
            timeline.mark("ready")
            return
        time.sleep(POLL_S)
    raise TimeoutError(f"not ready within {timeout_s:.0f}s\n{server.log_tail()}")


def _answers(server: ServerProcess, path: str) -> bool:
    return http_status(server.base_url + path, timeout_s=1.0) == 200


def profile(env: dict[str, str], kills: int, timeout_s: float, log_dir: Path) -> dict[str, Any]:
    port = free_port()
    log_path = log_dir / f"startup-{port}.log"
    server = ServerProcess(
        "gateway", gateway_argv(port), port, "/readyz", log_path, {**os.environ, **env}
    )
    log = LogWatcher(log_path)
    log.start()
    report: dict[str, Any] = {"env": env, "log": str(log_path)}
    try:
        started = time.monotonic()
        server.start()
        assert server.proc is not None
        cold = Timeline(started)
        watch(server, log, cold, timeout_s, set())
        _wait_standby(server, cold, timeout_s)
        time.sleep(1.0)  # let the just-started engine settle before reading memory
        report["start"], report["memory_ready"] = cold.marks, memory(server.proc.pid)
        report["restarts"] = []
        for _ in range(kills):
            report["restarts"].append(_kill_and_watch(server, log, timeout_s))
        report["memory_after_restarts"] = memory(server.proc.pid)
        report["shutdown"] = _terminate(server)
    finally:
        server.stop(grace_s=5)
        log.stop()
    return report


def _wait_standby(server: ServerProcess, timeline: Timeline, timeout_s: float) -> None:
    """With STANDBY_ENGINE, until the standby is ready too (marked ``standby ready``)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ready = _engine_stats(server).get("standby_ready")
        if ready is None:
            return
        if ready:
            timeline.mark("standby ready")
            return
        time.sleep(POLL_S * 4)
    raise TimeoutError(f"standby not ready within {timeout_s:.0f}s")


def _engine_stats(server: ServerProcess) -> dict[str, Any]:
    """The gateway's ``/resilience/stats`` engine summary (empty if it does not answer)."""
    try:
        with urllib.request.urlopen(server.base_url + "/resilience/stats", timeout=2) as resp:
            return dict(json.load(resp).get("engine", {}))
    except (OSError, ValueError):
        return {}


def _kill_and_watch(server: ServerProcess, log: LogWatcher, timeout_s: float) -> dict[str, float]:
    """SIGKILL the active engine core (not a standby's) and watch the restart."""
    assert server.proc is not None
    active = set(_engine_stats(server).get("engine_core_pids") or [])
    cores = [c for c in engine_cores(server.proc.pid) if not active or c.pid in active]
    if not cores:
        raise RuntimeError("no engine core to kill")
    killed = time.monotonic()
    for core in cores:
        core.send_signal(signal.SIGKILL)
    timeline = Timeline(killed)
    watch(server, log, timeline, timeout_s, {core.pid for core in cores})
    return timeline.marks


def _terminate(server: ServerProcess) -> dict[str, Any]:
    """SIGTERM the gateway; how long it took to exit, its status, and who outlived it."""
    assert server.proc is not None
    pid = server.proc.pid
    group = {proc.pid for proc in tree(pid)}
    started = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    try:
        code: int | None = server.proc.wait(timeout=120)
    except Exception:  # reported; stop() kills the group
        code = None
    took = round(time.monotonic() - started, 2)
    time.sleep(0.5)
    left = [p for p in group if psutil.pid_exists(p) and _alive(p)]
    return {"seconds": took, "exit_code": code, "left_behind": left}


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def render(report: dict[str, Any]) -> str:
    lines = [f"settings: {report['env'] or 'defaults'}", "", "start-up (s since launch):"]
    lines += _table(Timeline(0.0, report["start"]))
    for index, marks in enumerate(report.get("restarts", []), 1):
        lines += ["", f"restart {index} after SIGKILL of the engine core (s since the kill):"]
        lines += _table(Timeline(0.0, marks))
    for key in ("memory_ready", "memory_after_restarts"):
        if key in report:
            mem = report[key]
            lines.append(
                f"{key.replace('_', ' ')}: RSS {mem['rss_mib']} MiB (gateway + children; "
                f"children {mem['children_rss_mib']} MiB), USS {mem['uss_mib']} MiB"
            )
    if "shutdown" in report:
        down = report["shutdown"]
        lines.append(
            f"SIGTERM: exit {down['exit_code']} after {down['seconds']} s, "
            f"processes left behind: {down['left_behind'] or 'none'}"
        )
    return "\n".join(lines)


def _table(timeline: Timeline) -> list[str]:
    return [f"  {name:<22} {at:>7.2f}  (+{step:.2f})" for name, at, step in timeline.rows()]


def parse_env(pairs: list[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--env wants KEY=VALUE, got {pair!r}")
        env[key] = value
    return env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.startup", description=__doc__)
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--kills", type=int, default=1, help="engine-core kills (default 1)")
    parser.add_argument("--timeout", type=float, default=300.0, help="per phase set (s)")
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args(argv)
    # SIGTERM ends the run like Ctrl-C: the gateway (in its own session) is stopped too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    env = {"LOG_JSON": "false", **parse_env(args.env)}
    report = profile(env, args.kills, args.timeout, ROOT / "reports")
    print(render(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
