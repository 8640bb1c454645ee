"""Profile a server's API process under the benchmark workload: ``python -m loadtest.profile``.

``python -m loadtest.profile [--server gateway|vllm] [--concurrency 64] [--num-prompts 512]``
starts the server exactly as :mod:`loadtest.bench` does (same engine settings, features and
CPU placement), warms it up, and runs one concurrency level with vLLM's serving benchmark
while py-spy samples the API process (the engine core is another process, and the same in
both servers). It writes py-spy's collapsed stacks (``api.txt``, for flamegraph tools) under
``reports/profile-<timestamp>/`` and prints the functions with the most samples, by own time
and including callees, with the API process CPU per 1k output tokens.

py-spy reads another process's memory: in a container it needs ``CAP_SYS_PTRACE``.
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from loadtest.bench import make_server, parse_config, run_client, start_and_warm, stop_server
from loadtest.bench_report import BASELINE, CANDIDATE
from loadtest.pinning import CpuMeter, per_1k_tokens_ms
from loadtest.servers import ROOT

_LINE_NUMBER = re.compile(r":\d+\)$")


@dataclass(frozen=True)
class Profile:
    """Sample counts from py-spy's collapsed stacks (``frame;frame;... count`` lines)."""

    total: int
    own: Counter[str]
    inclusive: Counter[str]

    @classmethod
    def from_collapsed(cls, lines: Iterable[str]) -> Profile:
        own: Counter[str] = Counter()
        inclusive: Counter[str] = Counter()
        total = 0
        for line in lines:
            stack, _, count = line.strip().rpartition(" ")
            if not stack or not count.isdigit():
                continue
            samples = int(count)
            total += samples
            # "func (file.py:12)" -> "func (file.py)": one entry per function, not per line.
            frames = [_LINE_NUMBER.sub(")", frame) for frame in stack.split(";")]
            own[frames[-1]] += samples
            for frame in set(frames):
                inclusive[frame] += samples
        return cls(total, own, inclusive)

    def top(self, kind: str, n: int) -> list[tuple[str, float]]:
        """The ``n`` functions with most samples (``own`` or ``inclusive``), as shares."""
        counts = self.own if kind == "own" else self.inclusive
        return [(name, count / self.total) for name, count in counts.most_common(n)]

    def render(self, n: int = 25) -> str:
        lines = [f"{self.total} samples"]
        for kind in ("own", "inclusive"):
            lines.append(f"\n-- top {n} by {kind} time")
            lines += [f"{share:6.1%}  {name}" for name, share in self.top(kind, n)]
        return "\n".join(lines)


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(found).exists():
        raise SystemExit("py-spy is not installed: pip install -r requirements-dev.txt")
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.profile", description=__doc__)
    parser.add_argument("--server", choices=(CANDIDATE, BASELINE), default=CANDIDATE)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--num-prompts", type=int, default=512)
    parser.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    work_dir = ROOT / "reports" / f"profile-{time.strftime('%Y%m%d-%H%M%S')}"
    config = parse_config(
        [
            *("--servers", args.server, "--concurrency", str(args.concurrency)),
            *("--num-prompts", str(args.num_prompts), "--work-dir", str(work_dir)),
        ]
    )
    work_dir.mkdir(parents=True, exist_ok=True)
    spy, stacks = py_spy(), work_dir / "api.txt"
    process = make_server(config, args.server)
    try:
        if not start_and_warm(config, args.server, process) or process.proc is None:
            return 1
        pid = process.proc.pid
        spy_argv = [spy, "record", "-p", str(pid), "-r", str(args.rate), "--nonblocking"]
        recorder = subprocess.Popen(
            [*spy_argv, "--format", "raw", "-o", str(stacks)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        meter = CpuMeter(pid)
        before = meter.sample()
        result_path = work_dir / f"{args.server}-c{args.concurrency}.json"
        level, prompts = args.concurrency, args.num_prompts
        result = run_client(config, process.base_url, level, prompts, result_path)
        after = meter.sample()
        recorder.send_signal(signal.SIGINT)
        recorder.wait(timeout=60)
    finally:
        stop_server(args.server, process)
    if result is None or not stacks.exists():
        print(f"profile failed; see {work_dir}", file=sys.stderr)
        return 1
    tokens = int(result.get("total_output_tokens") or 0)
    cpu = per_1k_tokens_ms(before, after, tokens)
    print(Profile.from_collapsed(stacks.read_text().splitlines()).render(args.top))
    print(
        f"\n{args.server}: {result.get('output_throughput', 0):.0f} output tokens/s while "
        f"sampled; API process CPU {cpu.get('api_cpu_ms_per_1k_tokens', 0):.1f} ms per 1k "
        f"tokens; stacks in {stacks}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
