"""The upstream SSE reader: events split anywhere, comments, CRLF, and cut streams."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from app.deployments.sse import StreamCutError, sse_batches, sse_data


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


def _read(*parts: bytes) -> list[bytes]:
    async def collect() -> list[bytes]:
        return [data async for data in sse_data(_chunks(*parts))]

    return asyncio.run(collect())


def test_events_split_across_chunks_are_reassembled() -> None:
    """An event cut at any byte, even inside its separator, comes out whole, in order."""
    stream = b'data: {"a": 1}\n\n: a comment\n\ndata: {"b": 2}\n\ndata: [DONE]\n\n'
    for cut in range(1, len(stream)):
        assert _read(stream[:cut], stream[cut:]) == [b'{"a": 1}', b'{"b": 2}'], cut


def test_crlf_framing_and_multiline_data() -> None:
    """CRLF separators work, and several data lines of one event are joined."""
    assert _read(b"data: x\r\ndata: y\r\n\r\ndata: [DONE]\r\n\r\n") == [b"x\ny"]


@pytest.mark.parametrize("tail", [b"", b'data: {"cut', b"data: {}\n"])
def test_a_stream_that_ends_before_done_is_cut(tail: bytes) -> None:
    """Bytes that end before [DONE] — between events or mid-event — raise StreamCutError."""
    with pytest.raises(StreamCutError):
        _read(b"data: {}\n\n" + tail)


def _batches(*parts: bytes) -> list[list[bytes]]:
    async def collect() -> list[list[bytes]]:
        return [batch async for batch in sse_batches(_chunks(*parts))]

    return asyncio.run(collect())


def test_the_events_of_one_read_come_as_one_batch() -> None:
    """A relay that fell behind finds several events in one read: they come together (one
    step, one write to its client); an event completed by the next read comes with it."""
    read_1 = b"data: 1\n\ndata: 2\n\ndata: 3"
    read_2 = b"\n\ndata: 4\n\ndata: [DONE]\n\ndata: after\n\n"
    assert _batches(read_1, read_2) == [[b"1", b"2"], [b"3", b"4"]]


def test_a_crlf_separator_split_between_reads_is_still_one() -> None:
    assert _batches(b"data: 1\r", b"\n\r\ndata: [DONE]\r\n\r\n") == [[b"1"]]
