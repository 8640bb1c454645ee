"""Reading server-sent events from an upstream, in bytes: the per-token path of a proxied
stream, so no text decoding or line splitting beyond what the framing needs."""

from __future__ import annotations

from collections.abc import AsyncIterator

DONE = b"[DONE]"


class StreamCutError(Exception):
    """The upstream's stream ended before ``[DONE]`` (mid-event or between events)."""


async def sse_data(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The ``data`` of each event, until ``[DONE]``; raises :class:`StreamCutError` if the
    bytes end first. Comments and other fields are skipped; multi-line data is joined."""
    buffer = b""
    async for chunk in chunks:
        buffer += chunk
        while True:
            end, size = _event_end(buffer)
            if end < 0:
                break
            event, buffer = buffer[:end], buffer[end + size :]
            data = _data(event)
            if data is None:
                continue
            if data == DONE:
                return
            yield data
    raise StreamCutError(f"the stream ended without [DONE] ({len(buffer)} bytes pending)")


def _event_end(buffer: bytes) -> tuple[int, int]:
    """Where the first complete event ends and how long its separator is (-1: none yet)."""
    lf, crlf = buffer.find(b"\n\n"), buffer.find(b"\r\n\r\n")
    if crlf >= 0 and (lf < 0 or crlf < lf):
        return crlf, 4
    return lf, 2


def _data(event: bytes) -> bytes | None:
    lines = [
        line[5:].lstrip(b" ") if line.startswith(b"data:") else None
        for line in event.replace(b"\r\n", b"\n").split(b"\n")
    ]
    parts = [line for line in lines if line is not None]
    return b"\n".join(parts) if parts else None
