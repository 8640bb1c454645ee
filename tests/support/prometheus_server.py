"""A real Prometheus server for tests: loopback only, a free port, a temp TSDB.

``PrometheusServer.launch(workdir, targets, rule_files)`` writes a config that scrapes each
target's ``/metrics`` every second and evaluates rules every second, starts ``prometheus``
in the foreground and waits until ``/-/ready`` answers; ``stop()`` terminates it. Queries go
through the HTTP API (``/api/v1/query``, ``/api/v1/alerts``).

:func:`copy_rules` copies a rule file, optionally with shorter ``for:`` durations so that a
test need not wait a real minute for an alert to fire. Needs ``prometheus`` on ``PATH``
(Debian: ``apt-get install -y --no-install-recommends prometheus``, 2.42 here).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.support.servers import free_port

HOST = "127.0.0.1"
JOB = "llm-gateway"  # GatewayTargetDown selects on this job name


def prometheus_installed() -> bool:
    """Whether the ``prometheus`` server binary is on ``PATH``."""
    return shutil.which("prometheus") is not None


def copy_rules(source: Path, dest: Path, for_overrides: Mapping[str, str] | None = None) -> Path:
    """Copy the rule file ``source`` to ``dest``, replacing the ``for:`` of the alerts named
    in ``for_overrides`` (alert name → duration such as ``"3s"``); fails on an unknown name."""
    document = yaml.safe_load(source.read_text())
    wanted = dict(for_overrides or {})
    for group in document["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") in wanted:
                rule["for"] = wanted.pop(rule["alert"])
    if wanted:
        raise KeyError(f"no such alerts in {source}: {sorted(wanted)}")
    dest.write_text(yaml.safe_dump(document, sort_keys=False))
    return dest


@dataclass
class PrometheusServer:
    """One ``prometheus`` process; its config, TSDB and log live in ``workdir``."""

    workdir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def launch(
        cls,
        workdir: Path,
        targets: Iterable[str],
        rule_files: Iterable[Path] = (),
        interval_s: int = 1,
        timeout: float = 60.0,
    ) -> PrometheusServer:
        """Scrape ``targets`` (``host:port``) every ``interval_s`` and evaluate ``rule_files``."""
        server = cls(workdir)
        server.write_config(list(targets), list(rule_files), interval_s)
        server.start(timeout)
        return server

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def config_path(self) -> Path:
        return self.workdir / "prometheus.yml"

    @property
    def log_path(self) -> Path:
        return self.workdir / "prometheus.log"

    def write_config(self, targets: list[str], rule_files: list[Path], interval_s: int) -> None:
        config = {
            "global": {
                "scrape_interval": f"{interval_s}s",
                "evaluation_interval": f"{interval_s}s",
            },
            "rule_files": [str(path) for path in rule_files],
            "scrape_configs": [
                {
                    "job_name": JOB,
                    "metrics_path": "/metrics",
                    "scrape_timeout": f"{interval_s}s",
                    "static_configs": [{"targets": targets}],
                }
            ],
        }
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))

    def start(self, timeout: float = 60.0) -> None:
        """Start the server and return once ``/-/ready`` answers 200."""
        command = [
            "prometheus",
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.workdir / 'tsdb'}",
            f"--web.listen-address={HOST}:{self.port}",
        ]
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not self._ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"prometheus did not become ready\n{self.log_tail()}")
            time.sleep(0.1)

    def _ready(self) -> bool:
        try:
            return httpx.get(self.url + "/-/ready", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    def stop(self, timeout: float = 15.0) -> None:
        """Terminate the server (SIGTERM, then SIGKILL) and wait for it to exit."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout)

    def api(self, path: str, **params: str) -> Any:
        """``GET /api/v1/<path>``'s ``data``; fails unless Prometheus says ``success``."""
        response = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=5)
        body = response.json()
        assert body.get("status") == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result vector (each item has ``metric`` and ``value``)."""
        return self.api("query", query=expr)["result"]

    def alerts(self) -> list[dict[str, Any]]:
        """Pending and firing alerts (each has ``labels``, ``state`` and ``activeAt``)."""
        return self.api("alerts")["alerts"]

    def targets(self) -> list[dict[str, Any]]:
        """The active scrape targets (each has ``health``, ``lastError`` and ``scrapeUrl``)."""
        return self.api("targets")["activeTargets"]

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])
