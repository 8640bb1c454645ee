"""``python -m loadtest.cache_bench``: the response cache on vs off, in one run.

A workload where a share of requests (``--repeat-share``, 40 % by default) repeats an
earlier prompt, all greedy (``temperature: 0``, so cacheable) and streamed, so time to first
token is measured. The same workload (same seed) runs against a gateway started with
``CACHE_BACKEND=off`` and one with ``CACHE_BACKEND=memory``, one after the other, on the
embedded model; the table gives each side's hit rate (from ``X-Cache``), throughput and TTFT,
and the ratio on/off. Wrap it in ``flock /tmp/engine.lock`` on a shared machine.

A repeat that arrives while its original is still being generated is a miss: the cache
stores finished answers and does not coalesce requests in flight.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from loadtest.reporting import render_table
from loadtest.servers import ServerProcess, free_port, gateway_argv
from loadtest.workload import make_prompt

SIDES = ("off", "memory")


@dataclass
class Outcome:
    ttft_s: float
    latency_s: float
    cache: str
    tokens: int


@dataclass
class SideResult:
    backend: str
    wall_s: float
    outcomes: list[Outcome] = field(default_factory=list)
    failures: int = 0

    def row(self) -> list[str]:
        done = self.outcomes
        hits = sum(o.cache == "HIT" for o in done)
        ttft = [o.ttft_s * 1000 for o in done]
        return [
            self.backend,
            f"{len(done)}/{len(done) + self.failures}",
            f"{100 * hits / max(len(done), 1):.0f} %",
            f"{len(done) / self.wall_s:.2f}",
            f"{sum(o.tokens for o in done) / self.wall_s:.1f}",
            f"{statistics.median(ttft):.0f}" if ttft else "-",
            f"{_percentile(ttft, 0.95):.0f}" if ttft else "-",
            f"{statistics.median(o.latency_s for o in done):.2f}" if done else "-",
        ]


def workload(requests: int, repeat_share: float, prompt_words: int, seed: int) -> list[str]:
    """``requests`` prompts; each one, with probability ``repeat_share``, an earlier one."""
    rng = random.Random(seed)
    prompts: list[str] = []
    for _ in range(requests):
        if prompts and rng.random() < repeat_share:
            prompts.append(rng.choice(prompts))
        else:
            prompts.append(make_prompt(prompt_words, rng))
    return prompts


async def one_request(client: httpx.AsyncClient, prompt: str, max_tokens: int) -> Outcome | None:
    body = {
        "model": "tiny-llama",
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    started = time.perf_counter()
    ttft: float | None = None
    tokens = 0
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            await response.aread()
            return None
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if ttft is None and any(c["delta"].get("content") for c in chunk["choices"]):
                ttft = time.perf_counter() - started
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    latency = time.perf_counter() - started
    return Outcome(ttft or latency, latency, response.headers.get("X-Cache", "?"), tokens)


async def drive(
    base_url: str, prompts: Sequence[str], concurrency: int, max_tokens: int, result: SideResult
) -> None:
    queue: asyncio.Queue[str] = asyncio.Queue()
    for prompt in prompts:
        queue.put_nowait(prompt)
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, timeout=300, limits=limits) as client:

        async def worker() -> None:
            while not queue.empty():
                outcome = await one_request(client, queue.get_nowait(), max_tokens)
                if outcome is None:
                    result.failures += 1
                else:
                    result.outcomes.append(outcome)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        result.wall_s = time.perf_counter() - started


def run_side(args: argparse.Namespace, backend: str, prompts: list[str], work: Path) -> SideResult:
    port = free_port()
    env = {**os.environ, "CACHE_BACKEND": backend, "EMBEDDING_MODEL": "none"}
    env |= {"LOG_LEVEL": "WARNING", "RATE_LIMIT_RPM": "1000000"}
    server = ServerProcess(
        f"gateway cache={backend}", gateway_argv(port), port, "/readyz",
        work / f"gateway-{backend}.log", env=env,
    )  # fmt: skip
    with server:
        took = server.wait_ready(args.startup_timeout)
        print(f"[{backend}] ready in {took:.0f} s; {len(prompts)} requests", flush=True)
        warm = workload(2, 0.0, args.prompt_words, seed=args.seed + 1)  # not in the workload
        asyncio.run(drive(server.base_url, warm, 1, args.max_tokens, SideResult(backend, 0)))
        result = SideResult(backend, 0.0)
        asyncio.run(drive(server.base_url, prompts, args.concurrency, args.max_tokens, result))
    return result


def _percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.cache_bench", description=__doc__)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--repeat-share", type=float, default=0.4)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--prompt-words", type=int, default=24)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--startup-timeout", type=float, default=600)
    args = parser.parse_args(argv)
    prompts = workload(args.requests, args.repeat_share, args.prompt_words, args.seed)
    repeats = len(prompts) - len(set(prompts))
    with tempfile.TemporaryDirectory(prefix="cache-bench-") as work:
        results = [run_side(args, side, prompts, Path(work)) for side in SIDES]
    headers = ["cache", "ok", "hit rate", "req/s", "tok/s", "TTFT p50 ms", "TTFT p95 ms",
               "latency p50 s"]  # fmt: skip
    print(f"\n{len(prompts)} greedy streamed chat requests, {repeats} repeats of an earlier one "
          f"({100 * repeats / len(prompts):.0f} %), concurrency {args.concurrency}, "
          f"max_tokens {args.max_tokens}")  # fmt: skip
    print(render_table(headers, [r.row() for r in results]))
    off, on = results
    if off.outcomes and on.outcomes:
        ttft = statistics.median(o.ttft_s for o in on.outcomes) / statistics.median(
            o.ttft_s for o in off.outcomes
        )
        speed = (len(on.outcomes) / on.wall_s) / (len(off.outcomes) / off.wall_s)
        print(f"\nratio memory/off: throughput x{speed:.2f}, TTFT p50 x{ttft:.2f}")
    return 0 if not (off.failures or on.failures) else 1


if __name__ == "__main__":
    sys.exit(main())
