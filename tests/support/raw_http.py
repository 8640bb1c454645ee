"""HTTP/1.1 over a bare socket, for clients no library will imitate: one that sends half
a body and waits, one that never reads its response."""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import orjson


@dataclass
class RawResponse:
    status: int
    head: str
    body: bytes


def _connect(url: str, timeout: float, rcvbuf: int | None = None) -> socket.socket:
    parts = urlsplit(url)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:  # before connect, so the TCP window is small from the start
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(timeout)
    sock.connect((parts.hostname or "127.0.0.1", parts.port or 80))
    return sock


def _head(path: str, length: int, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json"]
    lines += [f"Content-Length: {length}", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def send_part_of_body(
    url: str, path: str, declared: int, sent: bytes, headers: dict[str, str], timeout: float
) -> RawResponse:
    """Declare a ``declared``-byte body, send only ``sent`` of it, and read what comes back
    within ``timeout`` (a server that waits for the rest answers nothing: TimeoutError)."""
    with _connect(url, timeout) as sock:
        sock.sendall(_head(path, declared, headers) + sent)
        data = b""
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in data or not _complete(data):
            sock.settimeout(max(deadline - time.monotonic(), 0.01))
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return RawResponse(status, head.decode("latin-1"), body)


def _complete(data: bytes) -> bool:
    head, _, body = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":", 1)[1])
    return True


def open_unread(url: str, path: str, payload: dict, headers: dict[str, str]) -> socket.socket:
    """Send a whole request on a socket with a tiny receive window and never read from it:
    the caller keeps the socket open (and then closes it) to play a stuck reader."""
    body = orjson.dumps(payload)
    sock = _connect(url, timeout=10, rcvbuf=4096)
    sock.sendall(_head(path, len(body), headers) + body)
    return sock


def send_and_hang_up(url: str, path: str, payload: dict, headers: dict[str, str]) -> None:
    """Send a whole request and close the connection at once, before any answer."""
    body = orjson.dumps(payload)
    with _connect(url, timeout=10) as sock:
        sock.sendall(_head(path, len(body), headers) + body)
