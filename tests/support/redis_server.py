"""A real ``redis-server`` for tests: loopback only, a free port, no persistence.

``RedisServer.launch(workdir)`` starts one daemonized server and waits until it answers
``PING``; ``stop()`` shuts it down (``redis-cli shutdown nosave``) and waits until it is
gone; ``start()`` brings it back on the same port, so a test can take Redis away from a
running client and give it back. Needs ``redis-server`` and ``redis-cli`` on ``PATH``
(Debian: ``apt-get install -y --no-install-recommends redis-server``).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"


def redis_installed() -> bool:
    """Whether both ``redis-server`` and ``redis-cli`` are on ``PATH``."""
    return shutil.which("redis-server") is not None and shutil.which("redis-cli") is not None


def free_port() -> int:
    """A loopback port free right now (another process could still take it; unlikely)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def ping(port: int, timeout: float = 0.2) -> bool:
    """Whether a Redis on ``port`` answers ``PING`` with ``+PONG``."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@dataclass
class RedisServer:
    """One ``redis-server`` process on ``port``, with its pid file and log in ``workdir``."""

    port: int
    workdir: Path

    @classmethod
    def launch(cls, workdir: Path, timeout: float = 10.0) -> RedisServer:
        server = cls(free_port(), workdir)
        server.start(timeout)
        return server

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    @property
    def pidfile(self) -> Path:
        return self.workdir / f"redis-{self.port}.pid"

    def start(self, timeout: float = 10.0) -> None:
        """Start the server (daemonized) and return once it answers ``PING``."""
        command = ["redis-server", "--port", str(self.port), "--bind", HOST]
        command += ["--save", "", "--appendonly", "no", "--daemonize", "yes"]
        command += ["--pidfile", str(self.pidfile), "--dir", str(self.workdir)]
        command += ["--logfile", str(self.workdir / f"redis-{self.port}.log")]
        subprocess.run(command, check=True, capture_output=True, timeout=timeout)
        _wait_until(lambda: ping(self.port), timeout, f"redis-server on port {self.port} to start")

    def stop(self, timeout: float = 10.0) -> None:
        """Shut the server down without saving; return once its process has exited."""
        command = ["redis-cli", "-h", HOST, "-p", str(self.port), "shutdown", "nosave"]
        # redis-cli reports the dropped connection of a successful shutdown as an error.
        subprocess.run(command, check=False, capture_output=True, timeout=timeout)
        # Redis removes its pid file as the last step of a clean shutdown. (Polling the pid
        # instead could wait forever on a zombie nobody reaps in a container.)
        _wait_until(
            lambda: not ping(self.port) and not self.pidfile.exists(),
            timeout,
            f"redis-server on port {self.port} to stop",
        )


def _wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.02)
