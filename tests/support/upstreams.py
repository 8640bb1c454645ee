"""Upstream servers for the routing tests: vLLM's own OpenAI server on the embedded model,
started as a real process, and a deliberately broken OpenAI-compatible upstream.

vLLM's server gets the same start-up tuning as the gateway's engine (KV cache sized to the
need, worker in the core process, no inductor), so it is ready in about the same time.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from app.engine.default_model import DEFAULT_MODEL_DIR
from loadtest.servers import ServerProcess, free_port

MODEL_DIR = DEFAULT_MODEL_DIR
KV_CACHE_BYTES = 256 * 1024**2
FAST_START_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "TORCH_COMPILE_DISABLE": "1"}


def vllm_server(log_dir: Path, max_model_len: int = 1024, port: int | None = None) -> ServerProcess:
    """vLLM's OpenAI server on the embedded model as ``tiny-llama`` (call ``start()``)."""
    port = port or free_port()
    argv = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(MODEL_DIR), "--served-model-name", "tiny-llama",
        "--enforce-eager", "--max-model-len", str(max_model_len), "--seed", "0",
        "--kv-cache-memory-bytes", str(KV_CACHE_BYTES),
        "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    env = {**os.environ, **FAST_START_ENV}
    return ServerProcess("vLLM", argv, port, "/health", log_dir / f"vllm-{port}.log", env)


def broken_upstream(mode: dict[str, str]) -> Starlette:
    """An OpenAI-compatible upstream that misbehaves as ``mode["how"]`` says: ``garbage``
    (a 200 stream whose event is not JSON), ``hang`` (headers, then silence), ``cut`` (a
    stream cut mid-event), ``error500``, ``busy429`` (429 with Retry-After), ``html200``
    (a 200 that is not an event stream at all), ``partial`` (three good chunks, without
    token ids, then the connection drops); ``ok`` answers well (two tokens, ``[DONE]``), and
    ``slow`` the same after half a second.
    ``/health`` answers 200."""

    async def completions(request: Request) -> Response:
        how = mode["how"]
        if how == "error500":
            return JSONResponse({"error": {"message": "boom", "type": "server_error"}}, 500)
        if how == "busy429":
            return JSONResponse({"error": {"message": "slow down"}}, 429, {"Retry-After": "7"})
        return StreamingResponse(_events(how), media_type="text/event-stream")

    async def embeddings(request: Request) -> Response:
        """``ok``: one vector per input, ``[len(tokens), first token]``, listed last input
        first (the ``index`` says which); ``garbage``: a 200 that is not JSON."""
        how = mode["how"]
        if how in ("error500", "busy429"):
            return await completions(request)
        if how == "garbage":
            return Response(b"{not json", media_type="application/json")
        inputs = (await request.json())["input"]
        data = [
            {"object": "embedding", "index": i, "embedding": [float(len(ids)), float(ids[0])]}
            for i, ids in enumerate(inputs)
        ]
        return JSONResponse({"object": "list", "data": data[::-1], "model": "m"})

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    return Starlette(
        routes=[
            Route("/v1/completions", completions, methods=["POST"]),
            Route("/v1/chat/completions", completions, methods=["POST"]),
            Route("/v1/embeddings", embeddings, methods=["POST"]),
            Route("/health", health),
        ]
    )


async def _events(how: str):  # type: ignore[no-untyped-def]
    if how == "slow":
        await asyncio.sleep(0.5)
    if how in ("ok", "slow"):
        for token, finish in ((104, None), (105, "length")):
            choice = {"index": 0, "text": chr(token), "token_ids": [token], "finish_reason": finish}
            yield b"data: " + json.dumps({"choices": [choice]}).encode() + b"\n\n"
        yield b"data: [DONE]\n\n"
    elif how == "garbage":
        yield b"data: {this is not json\n\n"
    elif how == "cut":
        yield b'data: {"choices": [{"index": 0, "text": "hal'
    elif how == "html200":
        yield b"<html><body>proxy error</body></html>"
    elif how == "partial":
        for token in (104, 105, 33):
            chunk = {"choices": [{"index": 0, "text": chr(token)}]}
            yield b"data: " + json.dumps(chunk).encode() + b"\n\n"
            await asyncio.sleep(0.05)
    elif how == "hang":
        yield b": keep-alive comment\n\n"
        await asyncio.sleep(3600)


async def drop_first_posts(target_port: int, drops: int) -> asyncio.Server:
    """A loopback TCP hop to ``target_port`` that closes the first ``drops`` connections
    carrying a POST as soon as its headers arrive, unanswered: what a server closing an idle
    keep-alive connection does to a request sent on it. Other POST connections are relayed;
    GETs (health checks) are answered 200 here, with ``Connection: close``."""
    left = drops

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal left
        head = await reader.readuntil(b"\r\n\r\n")
        if head.startswith(b"GET"):  # health checks: answered here, on a connection not kept
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            await writer.drain()
            writer.close()
            return
        if left > 0:
            left -= 1
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target_port)
        up_writer.write(head)
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    return await asyncio.start_server(handle, "127.0.0.1", free_port())
