"""Run the real app in uvicorn on a free loopback port, on a background event loop.

The engine and every server of a test session share one event loop thread, because vLLM's
``AsyncLLM`` binds to the loop it first runs on. Tests talk to the servers over real HTTP.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Coroutine
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

import uvicorn
from fastapi import FastAPI

T = TypeVar("T")


class LoopThread:
    """An asyncio loop running forever in a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RunningServer:
    app: FastAPI
    server: uvicorn.Server
    port: int
    done: Future[None]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"


def start_server(loop: LoopThread, app: FastAPI, timeout: float = 30) -> RunningServer:
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    done = asyncio.run_coroutine_threadsafe(server.serve(), loop.loop)
    deadline = time.monotonic() + timeout
    while not server.started:
        if done.done() or time.monotonic() > deadline:
            done.result(timeout=0)
            raise TimeoutError("uvicorn did not start")
        time.sleep(0.02)
    return RunningServer(app, server, port, done)


def stop_server(running: RunningServer, timeout: float = 30) -> None:
    running.server.should_exit = True
    running.done.result(timeout)
