"""A forked engine core drops the gateway's TCP sockets and signal wake-up fd at once."""

from __future__ import annotations

import os
import signal
import socket

import pytest

from app.engine.forking import _forget_parent_io, use_start_method


def test_the_child_closes_inherited_tcp_sockets_and_keeps_others() -> None:
    """In the child, the listener is closed (the port would stay bound by the core) and a
    Unix socket pair is kept; the parent's copies are untouched."""
    listener = socket.create_server(("127.0.0.1", 0))
    unix_a, unix_b = socket.socketpair()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report which fds survived, then leave at once
        os.close(read_end)
        _forget_parent_io()
        alive = [_is_open(listener.fileno()), _is_open(unix_a.fileno())]
        os.write(write_end, bytes(int(flag) for flag in alive))
        os._exit(0)
    os.close(write_end)
    report = os.read(read_end, 2)
    os.waitpid(pid, 0)
    try:
        assert report == bytes([0, 1])
        assert _is_open(listener.fileno())
    finally:
        for sock in (listener, unix_a, unix_b):
            sock.close()
        os.close(read_end)


def test_the_child_drops_the_wake_up_fd() -> None:
    """A signal sent to the core must not be written to the gateway's event loop."""
    reader, writer = socket.socketpair()
    writer.setblocking(False)
    previous = signal.set_wakeup_fd(writer.fileno())
    read_end, write_end = os.pipe()
    try:
        pid = os.fork()
        if pid == 0:
            _forget_parent_io()
            os.write(write_end, str(signal.set_wakeup_fd(-1)).encode())
            os._exit(0)
        os.close(write_end)
        child_saw = int(os.read(read_end, 16).decode())
        os.waitpid(pid, 0)
        assert child_saw == -1  # already dropped by the hook
    finally:
        signal.set_wakeup_fd(previous)
        reader.close()
        writer.close()
        os.close(read_end)


def test_an_unknown_start_method_is_refused() -> None:
    with pytest.raises(ValueError):
        use_start_method("forkserver")


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True
