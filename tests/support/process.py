"""A real gateway process (``python -m app``) for tests that need signals or a second replica.

Used where an in-process server cannot do the job: SIGTERM drains, SIGKILL of the engine core,
and several replicas sharing Redis. Each one starts its own engine (~20 s on CPU).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil

from tests.support.servers import free_port

ROOT = Path(__file__).parents[2]
BASE_ENV = {
    "MAX_MODEL_LEN": "1024",
    "LOG_JSON": "true",
    "RATE_LIMIT_RPM": "1000000",
    "RATE_LIMIT_TPM": "1000000000",
    "SHUTDOWN_GRACE_S": "5",
    "EMBEDDING_MODEL": "none",  # a test that embeds asks for the model (a second engine)
}


class GatewayProcess:
    """Start with :meth:`start`; logs go to ``log_path``; always :meth:`stop` it.

    ``argv`` replaces ``python -m app`` (e.g. ``python dev.py run``); ``session`` starts it
    in a session (and process group) of its own, so what is left of it can be found.
    """

    def __init__(
        self,
        log_dir: Path,
        env: dict[str, str] | None = None,
        name: str = "gw",
        argv: list[str] | None = None,
        session: bool = False,
    ):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_dir / f"{name}-{self.port}.log"
        self.env = {**os.environ, **BASE_ENV, **(env or {}), "PORT": str(self.port)}
        self.argv = argv or [sys.executable, "-m", "app"]
        self.session = session
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, ready_timeout: float | None = 300) -> GatewayProcess:
        """Start it; wait until ready unless ``ready_timeout`` is None."""
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                self.argv, cwd=ROOT, env=self.env, stdout=log, stderr=log,
                start_new_session=self.session,
            )  # fmt: skip
        if ready_timeout is not None:
            self.wait_ready(ready_timeout)
        return self

    def group_left(self) -> list[int]:
        """Live processes of its process group (``session=True``); none once it has exited."""
        assert self.proc is not None and self.session
        left = []
        for proc in psutil.process_iter(["pid", "status"]):
            try:
                if os.getpgid(proc.pid) == self.proc.pid and proc.status() != psutil.STATUS_ZOMBIE:
                    left.append(proc.pid)
            except (OSError, psutil.Error):
                continue
        return left

    def engine_cores(self) -> list[psutil.Process]:
        """Every live engine-core child (two with a standby engine)."""
        assert self.proc is not None
        found = []
        for child in psutil.Process(self.proc.pid).children(recursive=True):
            try:
                if child.status() != psutil.STATUS_ZOMBIE and "EngineCor" in child.name():
                    found.append(child)
            except psutil.Error:
                continue
        return found

    def wait_ready(self, timeout: float) -> float:
        """Seconds until ``/readyz`` answers 200; fails if the process dies first."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            assert self.proc is not None and self.proc.poll() is None, self.log_tail()
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return time.monotonic() - started
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"gateway not ready after {timeout}s\n{self.log_tail()}")

    def engine_core(self) -> psutil.Process:
        """vLLM's live engine-core child process (a replaced one may linger as a zombie)."""
        assert self.proc is not None
        for child in psutil.Process(self.proc.pid).children(recursive=True):
            try:
                if child.status() != psutil.STATUS_ZOMBIE and "EngineCor" in child.name():
                    return child
            except psutil.Error:  # exited between listing and looking
                continue
        raise LookupError("no live EngineCore child process")

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc is not None and self.session:
            self._stop_group()
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            for child in psutil.Process(self.proc.pid).children(recursive=True):
                child.kill()
            self.proc.kill()
            self.proc.wait(10)

    def _stop_group(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(30)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        if self.proc.poll() is None:
            self.proc.wait(10)

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])
