"""Headless load test: ``python -m loadtest.run -c 20 -r 1000 [--host URL] [--stream]``.

Runs locust (``loadtest/locustfile.py``) in a subprocess with ``-c`` closed-loop users until
``-r`` requests completed (or ``--duration`` passed), against ``--host`` or, without it, a
gateway it starts itself (``python -m app`` on a free port, ready on ``/readyz``, stopped
with SIGTERM afterwards). Prints progress, then QPS, latency and TTFT percentiles, output
tokens/s and the status-code breakdown, and writes under ``reports/<timestamp>/``:
``summary.{json,csv}``, locust's ``report.html``, ``locust.json`` and ``locust_*.csv``,
``client_metrics.json``, ``plot.png`` and the logs.

Exit status: 0 ok; 1 error ratio above ``--max-error-ratio``; 2 the run could not start
(gateway not ready, locust wrote no results). Starting a gateway starts a vLLM engine: on
shared machines wrap the command in ``flock /tmp/engine.lock timeout 900 ...``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from loadtest.reporting import (
    load_json,
    plot_run,
    read_history,
    render_summary,
    summarize,
    write_summary_files,
)
from loadtest.servers import (
    AUTH_ON_LIMITS_UNBOUND_ENV,
    ROOT,
    ServerProcess,
    ServerStartError,
    free_port,
    gateway_argv,
    log_problems,
)
from loadtest.workload import DEFAULT_PROFILE, load_profile

LOCUSTFILE = ROOT / "loadtest" / "locustfile.py"
# A gateway this runner starts has auth on (with --api-key) and rate limits too high to bind,
# so the test measures capacity, not the per-key limits (RATE_LIMIT_RPM defaults to 60).
# The caller's environment, then --gateway-env, override these; admission (CONCURRENCY_LIMIT,
# queue, load shedding) keeps its configured values: it is part of what is being tested.
SELF_STARTED_GATEWAY_ENV = dict(AUTH_ON_LIMITS_UNBOUND_ENV)
PROGRESS_INTERVAL_S = 5
EXIT_OK, EXIT_ERROR_RATIO, EXIT_NOT_STARTED = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    """The CLI (also what ``python dev.py load-test`` forwards to)."""
    parser = argparse.ArgumentParser(prog="python -m loadtest.run", description=__doc__)
    parser.add_argument("-c", "--concurrency", type=int, default=20, help="locust users")
    parser.add_argument("-r", "--requests", type=int, default=1000, help="total requests")
    parser.add_argument("--host", help="gateway base URL; default: start one on a free port")
    parser.add_argument(
        "--stream", action="store_true", help="stream every request (default: profile's ratio)"
    )
    parser.add_argument("--duration", help="also stop after this long, e.g. 60s, 5m")
    parser.add_argument("--workload", default=DEFAULT_PROFILE, help="profile name or JSON path")
    parser.add_argument("--prompt-tokens", type=int, help="override the profile's prompt size")
    parser.add_argument("--max-tokens", type=int, help="override the profile's max_tokens")
    parser.add_argument(
        "--api-key",
        default=os.environ.get("LOADTEST_API_KEY", "loadtest"),
        help="Bearer key (env LOADTEST_API_KEY)",
    )
    parser.add_argument(
        "--max-error-ratio",
        type=float,
        default=1.0,
        help="exit 1 when failed/total is above this (default 1.0: never)",
    )
    parser.add_argument(
        "--gateway-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="env for a gateway this runner starts (repeatable), e.g. RATE_LIMIT_RPM=600",
    )
    parser.add_argument("--report-dir", type=Path, help="default: reports/<timestamp>/")
    parser.add_argument("--startup-timeout", type=float, default=600.0, help="gateway, seconds")
    parser.add_argument(
        "--timeout", type=float, default=3600.0, help="stop locust after this many seconds"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one load test; returns the exit status (see the module docstring)."""
    args = build_parser().parse_args(argv)
    if args.concurrency < 1 or args.requests < 1:
        print("error: -c and -r must be >= 1", file=sys.stderr)
        return EXIT_NOT_STARTED
    try:
        load_profile(args.workload)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_NOT_STARTED
    try:
        env = gateway_env(args.api_key, args.gateway_env)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_NOT_STARTED
    out = args.report_dir or ROOT / "reports" / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    gateway: ServerProcess | None = None
    try:
        host = args.host
        if host is None:
            gateway = start_gateway(out, args.startup_timeout, env)
            host = gateway.base_url
        return run_and_report(args, host.rstrip("/"), out)
    except ServerStartError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_NOT_STARTED
    finally:
        if gateway is not None:
            stop_gateway(gateway)


def gateway_env(api_key: str, overrides: Sequence[str]) -> dict[str, str]:
    """Environment of a self-started gateway: :data:`SELF_STARTED_GATEWAY_ENV`, then the
    caller's environment, then ``KEY=VALUE`` overrides; ``{api_key}`` is expanded."""
    env = {**SELF_STARTED_GATEWAY_ENV, **os.environ}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--gateway-env wants KEY=VALUE, got {item!r}")
        env[key] = value
    return {key: value.replace("{api_key}", api_key) for key, value in env.items()}


def start_gateway(out: Path, timeout_s: float, env: dict[str, str]) -> ServerProcess:
    """Start ``python -m app`` on a free port and wait for ``/readyz``."""
    port = free_port()
    gateway = ServerProcess(
        "gateway", gateway_argv(port), port, "/readyz", out / "gateway.log", env=env
    )
    print(f"starting the gateway on {gateway.base_url} (log: {gateway.log_path}) ...", flush=True)
    gateway.start()
    try:
        took = gateway.wait_ready(timeout_s)
    except ServerStartError:
        gateway.stop(grace_s=10)
        raise
    print(f"gateway ready after {took:.0f} s", flush=True)
    return gateway


def stop_gateway(gateway: ServerProcess) -> None:
    """SIGTERM the gateway and report its exit code and any error lines in its log."""
    code = gateway.stop()
    # uvicorn re-raises the SIGTERM after its graceful shutdown, so -15 is the normal code.
    clean = "Application shutdown complete" in gateway.log_tail(200)
    print(f"gateway stopped (exit code {code}; {'clean' if clean else 'NOT a clean'} shutdown)")
    problems = log_problems(gateway.log_path)
    if problems:
        print(f"gateway log has {len(problems)}+ error lines ({gateway.log_path}):")
        for line in problems[:10]:
            print(f"  {line}")


def locust_command(args: argparse.Namespace, host: str, out: Path) -> list[str]:
    """The headless locust command line for this run (the API key travels in the env)."""
    users = str(args.concurrency)
    cmd = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
        "-u", users, "-r", users, "--host", host, "--only-summary",
        "--csv", str(out / "locust"), "--csv-full-history", "--html", str(out / "report.html"),
        "--json-file", str(out / "locust"), "--metrics-file", str(out / "client_metrics.json"),
        "--request-cap", str(args.requests), "--workload", args.workload,
        "--progress-interval", str(PROGRESS_INTERVAL_S),
    ]  # fmt: skip
    if args.duration:
        cmd += ["--run-time", args.duration]
    if args.stream:
        cmd += ["--stream-ratio", "1"]
    if args.prompt_tokens:
        cmd += ["--prompt-tokens", str(args.prompt_tokens)]
    if args.max_tokens:
        cmd += ["--max-tokens", str(args.max_tokens)]
    return cmd


def run_locust(cmd: list[str], env: dict[str, str], log_path: Path, timeout_s: float) -> int:
    """Run locust, teeing its output to ``log_path`` and echoing progress lines; SIGTERM it
    (locust then still writes its reports) after ``timeout_s``."""
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        bufsize=1,
    )
    watchdog = threading.Timer(timeout_s, proc.terminate)
    watchdog.start()
    try:
        with log_path.open("w") as log:
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                if line.startswith("progress:") or "ERROR" in line or "Traceback" in line:
                    print(line.rstrip(), flush=True)
        return proc.wait()
    finally:
        watchdog.cancel()


def run_and_report(args: argparse.Namespace, host: str, out: Path) -> int:
    """Run locust against ``host`` and print/write the summary; returns the exit status."""
    print(
        f"load test: {args.concurrency} users, {args.requests} requests, workload "
        f"{args.workload}{', all streamed' if args.stream else ''} -> {host}",
        flush=True,
    )
    env = {**os.environ, "LOADTEST_API_KEY": args.api_key, "PYTHONPATH": str(ROOT)}
    code = run_locust(locust_command(args, host, out), env, out / "locust.log", args.timeout)
    stats_path = out / "locust.json"
    if not stats_path.exists():
        print(f"error: locust exited with {code} and wrote no results; see {out / 'locust.log'}")
        return EXIT_NOT_STARTED
    client_path = out / "client_metrics.json"
    client = load_json(client_path) if client_path.exists() else None
    summary = summarize(load_json(stats_path), client)
    write_summary_files(summary, out)
    if summary.requests == 0:
        print(f"error: no request completed; see {out / 'locust.log'}", file=sys.stderr)
        return EXIT_NOT_STARTED
    _plot(out, client)
    print()
    print(render_summary(summary))
    print(f"\nreports: {out}/ (report.html, summary.csv, summary.json, plot.png, locust_*.csv)")
    if summary.error_ratio > args.max_error_ratio:
        print(
            f"error ratio {summary.error_ratio:.2%} is above --max-error-ratio "
            f"{args.max_error_ratio:.2%}",
            file=sys.stderr,
        )
        return EXIT_ERROR_RATIO
    return EXIT_OK


def _plot(out: Path, client: dict | None) -> None:
    history_path = out / "locust_stats_history.csv"
    history = read_history(history_path) if history_path.exists() else {}
    timeline = (client or {}).get("timeline") or []
    try:
        plot_run(history, timeline, out / "plot.png", f"load test {out.name}")
    except Exception as exc:  # a broken plot must not hide the numbers
        print(f"warning: no plot: {exc}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
