"""Reading server-sent events from an upstream, in bytes: the per-token path of a proxied
stream, so no text decoding or line splitting beyond what the framing needs.

Events come out in batches: every complete event of what one read brought. A relay that
keeps up reads one event at a time; one that falls behind (many streams, one CPU) finds
several buffered and handles them as one step, with one write to its client, so its cost
per token falls as the load rises instead of queueing up.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

DONE = b"[DONE]"


class StreamCutError(Exception):
    """The upstream's stream ended before ``[DONE]`` (mid-event or between events)."""


async def sse_batches(chunks: AsyncIterator[bytes]) -> AsyncIterator[list[bytes]]:
    """The ``data`` of each event, a list per read that completed any, until ``[DONE]``
    (the events before it in its read come first); raises :class:`StreamCutError` if the
    bytes end first. Comments and other fields are skipped; multi-line data is joined."""
    buffer = b""
    async for chunk in chunks:
        buffer = buffer + chunk if buffer else chunk
        if b"\r" in buffer:
            buffer = buffer.replace(b"\r\n", b"\n")  # CRLF framing: rare, normalised
        if b"\n\n" not in buffer:
            continue
        *events, buffer = buffer.split(b"\n\n")
        batch: list[bytes] = []
        for event in events:
            data = _data(event)
            if data is None:
                continue
            if data == DONE:
                if batch:
                    yield batch
                return
            batch.append(data)
        if batch:
            yield batch
    raise StreamCutError(f"the stream ended without [DONE] ({len(buffer)} bytes pending)")


async def sse_data(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The ``data`` of each event, one at a time (see :func:`sse_batches`)."""
    async for batch in sse_batches(chunks):
        for data in batch:
            yield data


def _data(event: bytes) -> bytes | None:
    if b"\n" not in event:  # the usual one-line event
        return event[5:].lstrip(b" ") if event.startswith(b"data:") else None
    lines = [
        line[5:].lstrip(b" ") if line.startswith(b"data:") else None for line in event.split(b"\n")
    ]
    parts = [line for line in lines if line is not None]
    return b"\n".join(parts) if parts else None
