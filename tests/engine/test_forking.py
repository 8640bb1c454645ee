"""A forked engine core drops the gateway's TCP sockets and signal wake-up fd at once."""

from __future__ import annotations

import os
import signal
import socket
import stat

import pytest

from app.engine.forking import _forget_parent_io, use_start_method


def test_the_child_releases_inherited_tcp_sockets_and_keeps_others() -> None:
    """In the child, the listener is released (the port would stay bound by the core) but
    its fd number stays taken (by /dev/null: a parent's socket object collected in the
    child must not close what the core opened since); a Unix socket pair is kept; the
    parent's copies are untouched."""
    listener = socket.create_server(("127.0.0.1", 0))
    unix_a, unix_b = socket.socketpair()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report which fds survived, then leave at once
        os.close(read_end)
        _forget_parent_io()
        fd = listener.fileno()
        alive = [_is_socket(fd), _is_open(fd), _is_socket(unix_a.fileno())]
        os.write(write_end, bytes(int(flag) for flag in alive))
        os._exit(0)
    os.close(write_end)
    report = os.read(read_end, 3)
    os.waitpid(pid, 0)
    try:
        assert report == bytes([0, 1, 1])
        assert _is_socket(listener.fileno())
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


def _is_socket(fd: int) -> bool:
    try:
        return stat.S_ISSOCK(os.fstat(fd).st_mode)
    except OSError:
        return False


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True
