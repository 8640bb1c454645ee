"""A TCP proxy on loopback that can lose one reply: the request reaches the server, the
answer never reaches the client, and the client's connection drops (as a network cut or
a server restart mid-reply would do)."""

from __future__ import annotations

import asyncio
import contextlib
import threading

from tests.support.servers import LoopThread, free_port


class ReplyDroppingProxy:
    """Forwards 127.0.0.1:``port`` to ``upstream_port``; :meth:`drop_next_reply` arms it."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self.dropped = 0
        self._armed = threading.Event()
        self._loop = LoopThread()
        self._server = self._loop.run(self._start())

    async def _start(self) -> asyncio.Server:
        return await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    def drop_next_reply(self) -> None:
        self._armed.set()

    def close(self) -> None:
        self._loop.run(self._stop())  # asyncio servers are not thread-safe: close on its loop
        self._loop.close()

    async def _stop(self) -> None:
        self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        upstream = asyncio.create_task(self._pipe(reader, up_writer, replies=False))
        downstream = asyncio.create_task(self._pipe(up_reader, writer, replies=True))
        await asyncio.wait({upstream, downstream}, return_when=asyncio.FIRST_COMPLETED)
        for task in (upstream, downstream):
            task.cancel()
        for stream in (writer, up_writer):
            with contextlib.suppress(OSError):
                stream.close()

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, replies: bool
    ) -> None:
        while data := await reader.read(65536):
            if replies and self._armed.is_set():
                self._armed.clear()
                self.dropped += 1
                return  # the server answered; the client never hears it
            writer.write(data)
            await writer.drain()
