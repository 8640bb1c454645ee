"""Start vLLM's engine-core process by ``fork`` on CPU instead of ``spawn``.

vLLM's CPU platform asks for ``spawn``: the new interpreter re-imports torch and vLLM before
it can build anything, ~17 s of every start and restart on a 2-core machine. A forked core
inherits them (and shares their pages until written). What a fork also inherits, and must
not keep, is undone in the child at once:

- the gateway's TCP sockets (the listener and client connections): a core holding a copy
  would keep a port bound and closed connections open. Each is replaced by ``/dev/null``
  under the same fd number rather than closed: the parent's socket objects live on in the
  child and close their fd when collected, which, had the number been freed, would close
  whatever the core opened under it since (libzmq's eventfd: the core aborted with
  "Invalid argument (src/signaler.cpp)" when a second engine was forked in one process);
- Python's signal wake-up fd: a signal sent to the core (vLLM stops it with SIGTERM) would
  otherwise be written to the gateway's event loop, which would take it as its own.

Forks are also started one at a time (:func:`_serialize_fork_starts`): two engines started
together must not inherit each other's process sentinel, or one's death could go unseen.

The child runs only vLLM's engine core, which builds its own ZMQ context and sockets.
"""

from __future__ import annotations

import contextlib
import multiprocessing.context
import os
import signal
import socket
import stat
import threading
from typing import Any

START_METHODS = ("fork", "spawn")
_hooked = False
_FORKING = threading.Lock()


def use_start_method(method: str) -> None:
    """Set vLLM's start method for the next engine core (after vLLM's config is built:
    its CPU platform sets ``spawn`` there)."""
    if method not in START_METHODS:
        raise ValueError(f"ENGINE_START_METHOD must be one of {START_METHODS}, got {method!r}")
    os.environ["VLLM_WORKER_MULTIPROC_METHOD"] = method
    if method == "fork":
        _hook_once()


def _hook_once() -> None:
    global _hooked
    if not _hooked:
        os.register_at_fork(after_in_child=_forget_parent_io)
        _serialize_fork_starts()
        _hooked = True


def _serialize_fork_starts() -> None:
    """Start forked processes one at a time.

    A fork start makes a pipe, forks, and closes the pipe's write end in the parent; the
    child keeps it, and the parent learns of the child's death when the last write end
    closes. Two engines started at once from two threads may interleave there: a second
    child forked while the parent still holds the first's write end keeps a copy of it, and
    the first core's death would go unseen. One SIGKILLed core of two did go unnoticed (no
    "engine core exited", no restart); this race is the suspected cause, not a proven one.
    """
    original = multiprocessing.context.ForkProcess._Popen

    def one_at_a_time(process_obj: Any) -> Any:
        with _FORKING:
            return original(process_obj)

    multiprocessing.context.ForkProcess._Popen = staticmethod(one_at_a_time)  # type: ignore[method-assign]


def _forget_parent_io() -> None:
    """In the forked child: drop the parent's wake-up fd and its TCP sockets."""
    with contextlib.suppress(ValueError):  # not the main thread: no wake-up fd to drop
        signal.set_wakeup_fd(-1)
    devnull = os.open(os.devnull, os.O_RDWR)
    try:
        for name in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError, ValueError):
                fd = int(name)
                if fd != devnull and _is_tcp(fd):
                    os.dup2(devnull, fd)  # the socket is released; the number stays taken
    finally:
        os.close(devnull)


def _is_tcp(fd: int) -> bool:
    if not stat.S_ISSOCK(os.fstat(fd).st_mode):
        return False
    sock = socket.socket(fileno=fd)
    try:
        return sock.family in (socket.AF_INET, socket.AF_INET6) and sock.type == socket.SOCK_STREAM
    finally:
        sock.detach()
