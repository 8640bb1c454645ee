"""``python -m loadtest.resume_trial``: how many streams killed mid-flight complete intact,
and what the seam costs.

Real parts, as in tests/e2e/test_resume.py: a gateway process with an in-process engine
(``local-a``) and vLLM's own server as a second process (``vllm-b``, ``resume: tokens``),
round robin. Each trial streams a greedy 300-token chat answer, SIGKILLs whichever deployment
serves it after a different number of chunks, and checks the client's text against the
uninterrupted answer (token for token), one ``[DONE]`` and usage counting 300 tokens; the
killed deployment is brought back before the next trial. Printed: intact/N, the longest gap
between two chunks after the kill (the seam) against the median gap, and the stream's total
time against an uninterrupted one. Run it under ``flock /tmp/engine.lock`` on a shared
machine; it uses the test suite's process helpers.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.e2e.test_resume import STORY, kill, revive, wait_both_up
from tests.support.process import GatewayProcess
from tests.support.upstreams import vllm_server

GREEDY = {"model": "tiny-llama", "messages": STORY, "temperature": 0, "ignore_eos": True}


@dataclass
class Trial:
    killed: str
    after: int
    intact: bool
    seam_s: float
    median_gap_s: float
    total_s: float


def stream(
    url: str, max_tokens: int, kill_after: int | None, on_kill: Any
) -> tuple[str, list[float], int, int, str, float]:
    """The text, the gaps between events, usage's completion tokens, [DONE]s, who served
    first, and the total time."""
    body = {**GREEDY, "max_tokens": max_tokens, "stream": True,
            "stream_options": {"include_usage": True}}  # fmt: skip
    text, gaps, tokens, done = "", [], 0, 0
    started = last = time.monotonic()
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=300) as response:
        served = response.headers["x-deployment"]
        for count, line in enumerate(line for line in response.iter_lines() if line):
            now = time.monotonic()
            gaps.append(now - last)
            last = now
            if line == "data: [DONE]":
                done += 1
                continue
            chunk = json.loads(line.removeprefix("data: "))
            text += "".join(c["delta"].get("content") or "" for c in chunk.get("choices", []))
            tokens = (chunk.get("usage") or {}).get("completion_tokens", tokens)
            if count == kill_after:
                on_kill(served)
    return text, gaps, tokens, done, served, time.monotonic() - started


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.resume_trial", description=__doc__)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=300)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="resume-trial-") as scratch:
        work = Path(scratch)
        vllm_b = vllm_server(work)
        vllm_b.start()
        try:
            vllm_b.wait_ready(300)
            trials, baseline = run_trials(work, vllm_b, args.trials, args.max_tokens)
        finally:
            vllm_b.stop()
    intact = sum(t.intact for t in trials)
    print(f"\n{intact}/{len(trials)} streams killed mid-flight completed intact")
    for t in trials:
        print(f"  killed {t.killed:8} after {t.after:3} chunks: intact={t.intact}  seam "
              f"{t.seam_s * 1000:6.0f} ms (median gap {t.median_gap_s * 1000:.0f} ms)  "
              f"total {t.total_s:.2f} s")  # fmt: skip
    for name in sorted({t.killed for t in trials}):
        seams = [t.seam_s * 1000 for t in trials if t.killed == name]
        print(f"seam when {name} dies: median {statistics.median(seams):.0f} ms, "
              f"max {max(seams):.0f} ms")  # fmt: skip
    extra = statistics.median(t.total_s for t in trials) - baseline
    print(f"uninterrupted stream {baseline:.2f} s; killed ones take {extra:+.2f} s more (median)")
    return 0 if intact == len(trials) else 1


def run_trials(work: Path, vllm_b: Any, count: int, max_tokens: int) -> tuple[list[Trial], float]:
    remote = {"name": "vllm-b", "kind": "openai", "base_url": f"{vllm_b.base_url}/v1",
              "resume": "tokens", "health": {"interval_s": 0.5, "failures": 1}}  # fmt: skip
    models = [{"id": "tiny-llama", "deployments": [{"name": "local-a", "kind": "local"}, remote]}]
    document = {"models": models, "routing": {"strategy": "round_robin"}}
    (work / "models.yaml").write_text(yaml.safe_dump(document), encoding="utf-8")
    env = {"MODELS_FILE": str(work / "models.yaml"), "BREAKER_RESET_TIMEOUT_S": "1"}
    gateway = GatewayProcess(work, env, name="trial")
    gateway.start()
    try:
        wait_both_up(gateway)
        reply = httpx.post(
            gateway.url + "/v1/chat/completions", json={**GREEDY, "max_tokens": max_tokens},
            timeout=300,
        )  # fmt: skip
        expected = reply.json()["choices"][0]["message"]["content"]
        baseline = statistics.median(
            stream(gateway.url, max_tokens, None, None)[5] for _ in range(3)
        )
        trials, killed = [], []

        def on_kill(served: str) -> None:
            killed.append(served)
            kill(served, gateway, vllm_b)

        for i in range(count):
            after = 40 + (i * 37) % 200
            killed.clear()
            text, gaps, tokens, done, served, total = stream(
                gateway.url, max_tokens, after, on_kill
            )
            revive(served, gateway, vllm_b)
            ok = text == expected and done == 1 and tokens == max_tokens and bool(killed)
            trial = Trial(served, after, ok, max(gaps[after + 1 :]),
                          statistics.median(gaps[1:]), total)  # fmt: skip
            print(f"trial {i + 1}: {trial}", flush=True)
            trials.append(trial)
        return trials, baseline
    finally:
        gateway.stop()


if __name__ == "__main__":
    sys.exit(main())
