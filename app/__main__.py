"""``python -m app [--host H] [--port P]``: serve the gateway (one uvicorn worker per engine).

Shutdown is graceful: the first SIGTERM/SIGINT turns ``/readyz`` to 503 and refuses new
requests with 503 + Retry-After, lets in-flight requests finish for ``SHUTDOWN_GRACE_S``,
then stops uvicorn (aborting what is left) and exits 0. A second signal exits at once.
Engines stop within ``ENGINE_STOP_TIMEOUT_S`` each, whatever their state (starting,
restarting, dead), and no child process outlives the server: what is left is ended.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from collections.abc import Callable
from types import FrameType

import psutil
import uvicorn

from app.config import ConfigError, Settings, load_settings
from app.observability.logging import configure_logging

log = logging.getLogger("app")

# uvicorn cancels what is still running this long after the drain ends.
ABORT_AFTER_DRAIN_S = 1
# Children still there at exit get SIGTERM, then SIGKILL this long after.
REAP_GRACE_S = 3.0


class DrainingServer(uvicorn.Server):
    """uvicorn, but the first exit signal drains the app before the listener closes."""

    def __init__(self, config: uvicorn.Config, app: object) -> None:
        super().__init__(config)
        self._app = app
        self._drain: asyncio.Task[None] | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._drain is not None or self.should_exit:
            super().handle_exit(sig, frame)  # second signal: uvicorn's own (force) exit
            return
        self._drain = asyncio.get_running_loop().create_task(self._drain_then_exit())

    async def _drain_then_exit(self) -> None:
        finished = await self._app.state.gateway.lifecycle.drain()  # type: ignore[attr-defined]
        log.warning("drained" if finished else "grace period over; aborting the rest")
        self.should_exit = True


def main(argv: list[str] | None = None) -> int:
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(prog="python -m app", description=__doc__)
    parser.add_argument("--host", default=settings.server.host)
    parser.add_argument("--port", type=int, default=settings.server.port)
    args = parser.parse_args(argv)
    # Before vLLM is imported (by create_app), so its import-time warnings are JSON too.
    configure_logging(settings.observability)
    return serve(settings, args.host, args.port)


def serve(settings: Settings, host: str, port: int) -> int:
    from app.main import create_app

    fatal: list[BaseException] = []
    server: DrainingServer | None = None

    def on_fatal(exc: BaseException) -> None:
        fatal.append(exc)
        if server is not None:
            server.should_exit = True

    try:
        app = create_app(settings, on_fatal=on_fatal)
    except ConfigError as exc:  # e.g. MODELS_FILE, read when the app is built
        print(exc, file=sys.stderr)
        return 2
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        access_log=settings.observability.log_access,
        timeout_graceful_shutdown=ABORT_AFTER_DRAIN_S,
        timeout_keep_alive=settings.server.keep_alive_timeout_s,
    )
    server = DrainingServer(config, app)
    try:
        server.run()
    finally:
        _end_engine_work(settings.engine.engine_stop_timeout_s)
    if fatal:
        print(f"error: the engine could not start: {fatal[0]}", file=sys.stderr)
        return 1
    return 0


def _end_engine_work(timeout_s: float) -> None:
    """Nothing of an engine may outlive the server, and nothing may hold its exit: child
    processes are ended, then engine work still running in threads (a build abandoned by
    a SIGTERM mid-start) gets ``timeout_s`` to finish, then what it started is ended too.
    (At exit, multiprocessing joins every live child it started: one left would hang it.)"""
    reap_children()
    from app.engine.threads import join_engine_threads

    if not join_engine_threads(timeout_s):
        log.warning("engine work still running at exit; its processes are ended")
    reap_children()


def reap_children(grace_s: float = REAP_GRACE_S) -> list[int]:
    """End every child process still running (an engine core whose build was abandoned
    mid-start, or whose stop timed out), multiprocessing's resource tracker aside: it
    leaves by itself when this process exits. Returns their pids."""
    children = [p for p in psutil.Process().children(recursive=True) if not _is_tracker(p)]
    for child in children:
        _signal(child, psutil.Process.terminate)
    _, alive = psutil.wait_procs(children, timeout=grace_s)
    for child in alive:
        _signal(child, psutil.Process.kill)
    if children:
        log.warning("ended child processes left at exit", extra={"pids": [p.pid for p in children]})
    return [p.pid for p in children]


def _is_tracker(process: psutil.Process) -> bool:
    try:
        return "resource_tracker" in " ".join(process.cmdline())
    except psutil.Error:
        return True  # gone already


def _signal(process: psutil.Process, send: Callable[[psutil.Process], None]) -> None:
    with contextlib.suppress(psutil.Error):
        send(process)


if __name__ == "__main__":
    sys.exit(main())
