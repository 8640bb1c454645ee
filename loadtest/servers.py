"""Start, probe and stop a server process (the gateway or vLLM's own server) for a run.

The caller owns the engine lock: wrap the whole command in ``flock /tmp/engine.lock`` on
shared machines. Nothing here takes that lock itself, since a child taking the lock its
parent holds would wait forever.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

ROOT = Path(__file__).resolve().parents[1]
LOG_PROBLEM_MARKERS = ("Traceback (most recent call last)", " ERROR ", "ERROR:", "CRITICAL")


class ServerStartError(RuntimeError):
    """The server exited or did not become ready in time; the message ends with its log tail."""


# Auth on (the key "{api_key}" is filled in by the caller) and per-key limits too high to
# bind: load tests and the benchmark measure the cost of running the checks, not the limits
# (RATE_LIMIT_RPM defaults to 60). Shared by loadtest.run and loadtest.bench.
AUTH_ON_LIMITS_UNBOUND_ENV: dict[str, str] = {
    "ENABLE_AUTH": "true",
    "API_KEYS": "{api_key}",
    "RATE_LIMIT_RPM": "1000000",
    "RATE_LIMIT_TPM": "1000000000",
    "RATE_LIMIT_CONCURRENCY": "1024",
}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def gateway_argv(port: int) -> list[str]:
    """``python -m app --host 127.0.0.1 --port P`` with this interpreter (the venv's)."""
    return [sys.executable, "-m", "app", "--host", "127.0.0.1", "--port", str(port)]


def http_status(url: str, timeout_s: float = 5.0) -> int | None:
    """The status of ``GET url``, or ``None`` when nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (urllib.error.URLError, OSError):
        return None


class ServerProcess:
    """A server child process in its own session (so it and the engine process it forks can
    be stopped together), logging to ``log_path``. Use as a context manager or call
    :meth:`start`, :meth:`wait_ready` and :meth:`stop`.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        port: int,
        ready_path: str,
        log_path: Path,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}"
        self.ready_path = ready_path
        self.log_path = log_path
        self.env = dict(os.environ if env is None else env)
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self) -> None:
        """Spawn the process (returns at once; see :meth:`wait_ready`)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.argv,
            cwd=ROOT,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    def wait_ready(self, timeout_s: float) -> float:
        """Poll ``ready_path`` until it answers 200; returns the seconds it took.

        Raises :class:`ServerStartError` when the process exits or the timeout passes.
        """
        assert self.proc is not None, "start() first"
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            if self.proc.poll() is not None:
                raise ServerStartError(
                    f"{self.name} exited with code {self.proc.returncode} before it was ready"
                    f"\n{self.log_tail()}"
                )
            if http_status(self.base_url + self.ready_path, timeout_s=2.0) == 200:
                return time.monotonic() - started
            time.sleep(1.0)
        raise ServerStartError(
            f"{self.name} not ready after {timeout_s:.0f} s ({self.base_url}{self.ready_path})"
            f"\n{self.log_tail()}"
        )

    def stop(self, grace_s: float = 60.0) -> int | None:
        """SIGTERM the server (graceful drain), then SIGKILL its whole session if it or a
        child it forked is still there after ``grace_s``. Returns the exit code."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                _kill_group(proc.pid)
                proc.wait(timeout=30)
        # The engine core is a child process: make sure none outlives the server.
        _kill_group(proc.pid)
        if self._log is not None:
            self._log.close()
            self._log = None
        return proc.returncode

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the server log."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _kill_group(pgid: int) -> None:
    """SIGKILL the process group ``pgid`` (the session started for our child), if any."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def log_problems(path: Path, limit: int = 20) -> list[str]:
    """Lines of a server log that look like errors (tracebacks, ERROR, CRITICAL)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    hits = [line for line in text.splitlines() if any(m in line for m in LOG_PROBLEM_MARKERS)]
    return hits[:limit]
