"""What relaying a stream costs the gateway, without an engine: ``python -m loadtest.relay_cost``.

A scripted OpenAI-compatible upstream (its own process) streams ``--tokens`` completion
chunks per request as fast as it can, in vLLM's shape (``token_ids`` in every chunk, a
usage chunk, ``[DONE]``). A client streams ``--requests`` requests at ``--concurrency``
from it directly, then through the gateway (``MODELS_FILE`` with one ``kind: openai``
deployment, ``send: tokens``, auth and limits on as in the benchmark), and prints per path
the tokens/s and each server process's CPU per 1k tokens.

The gateway's CPU per 1k tokens is the figure to compare between versions of the relay:
with the engine on the other CPU, it is what the proxy takes from the front-end core that
vLLM's own server needs (see docs/benchmarks-proxy.md). ``--profile DIR`` also runs py-spy
on the gateway during its run (collapsed stacks in ``DIR/relay.txt``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson
import psutil
import yaml

from app.engine.default_model import DEFAULT_MODEL_DIR
from loadtest.servers import AUTH_ON_LIMITS_UNBOUND_ENV, ServerProcess, free_port, gateway_argv

API_KEY = "relay-key"
MODEL = "tiny-llama"


# -- the scripted upstream (run as ``python -m loadtest.relay_cost upstream PORT TOKENS``) --


def upstream_app(tokens: int, gap_s: float = 0.0) -> object:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    async def events(max_tokens: int) -> AsyncIterator[bytes]:
        created = int(time.time())
        for i in range(max_tokens):
            last = i == max_tokens - 1
            chunk = {
                "id": "cmpl-relay", "object": "text_completion", "created": created,
                "model": MODEL,
                "choices": [{
                    "index": 0, "text": " tok", "logprobs": None,
                    "finish_reason": "length" if last else None, "stop_reason": None,
                    "token_ids": [1000 + i % 1000], "prompt_token_ids": None,
                }],
                "usage": None,
            }  # fmt: skip
            yield b"data: " + orjson.dumps(chunk) + b"\n\n"
            await asyncio.sleep(gap_s)  # one chunk per write, as an engine's steps come
        usage = {"prompt_tokens": 16, "completion_tokens": max_tokens, "total_tokens": 0}
        done = {"id": "cmpl-relay", "object": "text_completion", "created": created,
                "model": MODEL, "choices": [], "usage": usage}  # fmt: skip
        yield b"data: " + orjson.dumps(done) + b"\n\n"
        yield b"data: [DONE]\n\n"

    async def completions(request: Request) -> Response:
        body = orjson.loads(await request.body())
        return StreamingResponse(
            events(int(body.get("max_tokens") or tokens)), media_type="text/event-stream"
        )

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": MODEL, "object": "model"}]})

    return Starlette(
        routes=[
            Route("/v1/completions", completions, methods=["POST"]),
            Route("/health", health),
            Route("/v1/models", models),
        ]
    )


def serve_upstream(port: int, tokens: int, gap_s: float) -> None:
    import uvicorn

    uvicorn.run(upstream_app(tokens, gap_s), host="127.0.0.1", port=port, log_level="warning")  # type: ignore[arg-type]


# -- the client ----------------------------------------------------------------------------


@dataclass
class Timings:
    """One streamed request, seconds from sending it: its first token, its last, [DONE]."""

    first: float
    last: float
    done: float

    @property
    def tail(self) -> float:
        """From the last token to ``[DONE]``."""
        return self.done - self.last


@dataclass
class PathResult:
    name: str
    requests: int
    tokens: int
    errors: int
    seconds: float
    cpu_s: dict[str, float]
    timings: list[Timings]

    def line(self) -> str:
        per_1k = "  ".join(
            f"{who} {1000 * cpu / max(self.tokens, 1) * 1000:7.1f} ms/1k"
            for who, cpu in self.cpu_s.items()
        )
        return (
            f"{self.name:8s} {self.requests:5d} req  {self.errors:3d} errors  "
            f"{self.tokens / self.seconds:9.0f} tokens/s  CPU: {per_1k}\n"
            f"{'':8s} p50 ms: first token {self._p50('first'):7.2f}  last token "
            f"{self._p50('last'):8.2f}  [DONE] after the last {self._p50('tail'):6.2f}"
        )

    def _p50(self, what: str) -> float:
        values = [getattr(t, what) for t in self.timings]
        return 1000 * statistics.median(values) if values else float("nan")


async def _one(
    session: aiohttp.ClientSession, url: str, tokens: int, timings: list[Timings]
) -> int:
    body = {"model": MODEL, "prompt": "relay " * 16, "max_tokens": tokens, "stream": True}
    headers = {"Authorization": f"Bearer {API_KEY}"}
    counted = 0
    sent = time.perf_counter()
    first = last = 0.0
    async with session.post(f"{url}/v1/completions", json=body, headers=headers) as response:
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {(await response.text())[:200]}")
        async for line in response.content:
            if line.startswith(b"data: {") and b'"text"' in line:
                last = time.perf_counter() - sent
                first = first or last
                counted += 1
    timings.append(Timings(first, last, time.perf_counter() - sent))
    return counted


async def _drive(
    url: str, requests: int, concurrency: int, tokens: int, timings: list[Timings]
) -> tuple[int, int]:
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(i)
    counted, errors = 0, 0

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal counted, errors
        while not queue.empty():
            queue.get_nowait()
            try:
                # Not `counted += await ...`: concurrent workers would lose updates.
                got = await _one(session, url, tokens, timings)
            except Exception as exc:  # reported in the count, shown once
                if errors == 0:
                    print(f"  first error: {exc!r}", file=sys.stderr)
                errors += 1
            else:
                counted += got

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return counted, errors


def _cpu(pids: dict[str, int]) -> dict[str, float]:
    out = {}
    for who, pid in pids.items():
        times = psutil.Process(pid).cpu_times()
        out[who] = times.user + times.system
    return out


def run_path(name: str, url: str, pids: dict[str, int], args: argparse.Namespace) -> PathResult:
    warm: list[Timings] = []
    asyncio.run(_drive(url, min(args.requests, 2 * args.concurrency), args.concurrency, 8, warm))
    timings: list[Timings] = []
    before, started = _cpu(pids), time.perf_counter()
    tokens, errors = asyncio.run(_drive(url, args.requests, args.concurrency, args.tokens, timings))
    seconds = time.perf_counter() - started
    after = _cpu(pids)
    cpu = {who: after[who] - before[who] for who in pids}
    return PathResult(name, args.requests, tokens, errors, seconds, cpu, timings)


def models_file(directory: Path, upstream_url: str) -> Path:
    document = {
        "models": [
            {
                "id": MODEL,
                "deployments": [
                    {"name": "relay", "kind": "openai", "base_url": f"{upstream_url}/v1",
                     "send": "tokens", "max_connections": 512}
                ],
                "context_length": 2048,
                "tokenizer": str(DEFAULT_MODEL_DIR),
            }
        ]
    }  # fmt: skip
    path = directory / "relay-models.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["upstream"]:
        serve_upstream(int(argv[1]), int(argv[2]), float(argv[3]))
        return 0
    parser = argparse.ArgumentParser(prog="python -m loadtest.relay_cost", description=__doc__)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--requests", type=int, default=256)
    parser.add_argument("--tokens", type=int, default=128, help="chunks per request")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--gap-ms",
        type=float,
        default=0.0,
        help="the upstream's pause between chunks: at an engine's pace (~10 ms at "
        "concurrency 64 here) each chunk arrives alone and costs the relay a read of its own",
    )
    parser.add_argument("--profile", type=Path, help="py-spy the gateway into DIR/relay.txt")
    parser.add_argument("--gateway-env", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument(
        "--pause",
        type=float,
        default=0.0,
        help="idle seconds before each path: past the upstream's 5 s keep-alive, pooled "
        "connections go stale, as between the levels of the proxy benchmark",
    )
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="relay-"))
    up_port = free_port()
    upstream = ServerProcess(
        "upstream",
        [sys.executable, "-m", "loadtest.relay_cost", "upstream", str(up_port), str(args.tokens),
         str(args.gap_ms / 1000)],
        up_port, "/health", work / "upstream.log",
    )  # fmt: skip
    features = {k: v.replace("{api_key}", API_KEY) for k, v in AUTH_ON_LIMITS_UNBOUND_ENV.items()}
    extra = dict(item.split("=", 1) for item in args.gateway_env)
    gw_port = free_port()
    with upstream:
        upstream.wait_ready(60)
        env = {
            **os.environ, **features, "CONCURRENCY_LIMIT": "256", "MAX_QUEUE_SIZE": "4096",
            "MODELS_FILE": str(models_file(work, upstream.base_url)), "LOG_LEVEL": "WARNING",
            **extra,
        }  # fmt: skip
        gateway = ServerProcess(
            "gateway", gateway_argv(gw_port), gw_port, "/readyz", work / "gateway.log", env=env
        )
        with gateway:
            gateway.wait_ready(120)
            assert upstream.proc is not None and gateway.proc is not None
            up_pid, gw_pid = upstream.proc.pid, gateway.proc.pid
            print(
                f"relay cost: {args.requests} requests x {args.tokens} tokens at concurrency "
                f"{args.concurrency}, {args.repeats} repeats (logs in {work})"
            )
            for _ in range(args.repeats):
                time.sleep(args.pause)
                print(run_path("direct", upstream.base_url, {"upstream": up_pid}, args).line())
                time.sleep(args.pause)
                spy = _start_spy(gw_pid, args.profile) if args.profile else None
                result = run_path(
                    "gateway", gateway.base_url, {"gateway": gw_pid, "upstream": up_pid}, args
                )
                if spy is not None:
                    spy.send_signal(signal.SIGINT)
                    spy.wait(30)
                print(result.line())
    return 0


def _start_spy(pid: int, directory: Path) -> subprocess.Popen[bytes]:
    directory.mkdir(parents=True, exist_ok=True)
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    return subprocess.Popen(
        [spy, "record", "--pid", str(pid), "--format", "raw", "--rate", "200",
         "--output", str(directory / "relay.txt"), "--nonblocking"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
