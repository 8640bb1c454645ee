"""The proxy run of ``python dev.py bench --proxy``: the gateway with only a ``kind: openai``
deployment in front of vLLM's server, against that server directly, in one run.

One vLLM server stays up for the whole run and both paths hit it: direct (the client talks
to vLLM) and proxied (the client talks to the gateway, which sends token ids to vLLM and
streams back). Levels alternate between the two (direct then proxy, then the other order
on the next repeat) so the machine's drift hits both alike. The gateway runs with every
feature on (keys, limits, queue) as in the engine benchmark, and its API process shares
the front-end CPU with vLLM's; vLLM's engine core is kept off that CPU (``pin_engine``).
Both sides read the engine's pace from vLLM's ``/metrics`` (:mod:`loadtest.engine_pace`).
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from loadtest.bench import (
    SERVED_NAME,
    BenchConfig,
    Runs,
    metered_level,
    start_and_warm,
    stop_server,
    vllm_server,
)
from loadtest.bench_report import BASELINE, CANDIDATE, combine_runs
from loadtest.pinning import CpuMeter
from loadtest.servers import ServerProcess, free_port, gateway_argv

DIRECT, PROXIED = BASELINE, CANDIDATE  # the report's two columns: vLLM direct, through us


def models_file(config: BenchConfig, vllm_url: str) -> Path:
    """One model, one deployment: vLLM's server, sent token ids."""
    document = {
        "models": [
            {
                "id": SERVED_NAME,
                "deployments": [
                    {"name": "vllm", "kind": "openai", "base_url": f"{vllm_url}/v1",
                     "send": "tokens", "max_connections": 512}
                ],
                "context_length": 2048,
                "tokenizer": str(config.model_path),
            }
        ]
    }  # fmt: skip
    path = config.work_dir / "proxy-models.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


def proxy_gateway(config: BenchConfig, vllm_url: str) -> ServerProcess:
    features = {k: v.replace("{api_key}", config.api_key) for k, v in config.gateway_env.items()}
    env = {**os.environ, **features, "MODELS_FILE": str(models_file(config, vllm_url))}
    port = free_port()
    return ServerProcess(
        "gateway (proxy)", gateway_argv(port), port, "/readyz",
        config.work_dir / "proxy-gateway.log", env=env,
    )  # fmt: skip


def run_proxy_benchmark(config: BenchConfig) -> dict[str, dict[int, dict[str, Any]]]:
    """Both paths, every level, ``config.repeats`` times; medians per path and level."""
    runs: Runs = {side: {level: [] for level in config.levels} for side in (DIRECT, PROXIED)}
    if config.cpu_plan is not None:  # the engine core off the front-end CPU (pinning.py)
        config.cpu_plan = replace(config.cpu_plan, pin_engine=True)
    vllm = vllm_server(config, free_port())
    if not start_and_warm(config, DIRECT, vllm):
        return {}
    gateway = proxy_gateway(config, vllm.base_url)
    try:
        if not start_and_warm(config, PROXIED, gateway):
            return {}
        assert gateway.proc is not None
        assert vllm.proc is not None
        # Each side's front end first (vLLM's API process direct, the gateway's proxied),
        # then the other processes on the front-end CPU that side's requests keep busy.
        upstream = CpuMeter(vllm.proc.pid)
        meters = {DIRECT: [upstream], PROXIED: [CpuMeter(gateway.proc.pid), upstream]}
        urls = {DIRECT: vllm.base_url, PROXIED: gateway.base_url}
        for repeat in range(config.repeats):
            order = (DIRECT, PROXIED) if repeat % 2 == 0 else (PROXIED, DIRECT)
            for level in config.levels:
                for side in order:
                    result = metered_level(
                        config, side, urls[side], level, repeat, meters[side], vllm.base_url
                    )
                    runs[side][level].append(result)
    finally:
        stop_server(PROXIED, gateway)
        stop_server(DIRECT, vllm)
    return {
        side: {level: combine_runs(level_runs) for level, level_runs in per.items() if level_runs}
        for side, per in runs.items()
    }
