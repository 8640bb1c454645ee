"""Grafana dashboards and alert rules only query metrics that exist, in PromQL that parses.

Exported names come from a fresh :class:`GatewayMetrics` registry (counter → ``_total``,
histogram → ``_bucket``/``_sum``/``_count``), plus vLLM's metrics listed in ``VLLM_METRICS``:
each one is checked against vLLM's source, so a rename upstream fails here, not on a
dashboard at 3 a.m.
"""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from app.observability.metrics import GatewayMetrics
from tests.observability.promql import grafana_to_promql, metric_names, run_promtool
from tests.support.requirements import missing

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "infra" / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
RULES = ROOT / "alerts" / "gateway-rules.yml"

# Exposed name → (name in vLLM's source, its kind). prometheus_client adds _total to counters.
VLLM_METRICS = {
    "vllm:kv_cache_usage_perc": ("vllm:kv_cache_usage_perc", "gauge"),
    "vllm:num_requests_running": ("vllm:num_requests_running", "gauge"),
    "vllm:num_requests_waiting": ("vllm:num_requests_waiting", "gauge"),
    "vllm:num_preemptions_total": ("vllm:num_preemptions", "counter"),
}
PROMETHEUS_BUILTINS = {"up"}  # synthesised by Prometheus for every scrape target
_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def gateway_names() -> set[str]:
    metrics = GatewayMetrics.for_registry(CollectorRegistry())
    return {
        family.name + suffix
        for family in metrics.registry.collect()
        for suffix in _SUFFIXES[family.type]
    }


def exported_names() -> set[str]:
    return gateway_names() | set(VLLM_METRICS) | PROMETHEUS_BUILTINS


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def dashboard_exprs() -> list[tuple[str, str]]:
    """(where, expr) for every panel target and query variable of every dashboard."""
    found = []
    for path in DASHBOARDS:
        dashboard = load(path)
        for panel in panels(dashboard):
            for target in panel.get("targets", []):
                found.append((f"{path.name}: {panel['title']}", target["expr"]))
        for variable in dashboard.get("templating", {}).get("list", []):
            query = variable.get("query", "")
            query = query.get("query", "") if isinstance(query, dict) else query
            if query.startswith("label_values("):
                metric = query.removeprefix("label_values(").split(",")[0].strip()
                found.append((f"{path.name}: ${variable['name']}", metric))
    return found


def rule_exprs() -> list[tuple[str, str]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [(rule["alert"], rule["expr"]) for group in groups for rule in group["rules"]]


def test_dashboards_exist() -> None:
    """The overview dashboard is there; the parametrised checks below are not vacuous."""
    assert "gateway-overview.json" in {path.name for path in DASHBOARDS}
    assert len(dashboard_exprs()) > 20


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('sum by (le) (rate(a_bucket{x="y"}[5m]))', {"a_bucket"}),
        ("histogram_quantile(0.95, b) > 2.5e1 and on() c == 1", {"b", "c"}),
        ("x / on(job, instance) (y > 0) or vector(0) offset 5m", {"x", "y"}),
        ("a * ignoring(k) group_left b unless bool c", {"a", "b", "c"}),
        ('vllm:kv_cache_usage_perc{model_name=~"$model"} > 0.95', {"vllm:kv_cache_usage_perc"}),
    ],
)
def test_metric_name_extraction(expr: str, names: set[str]) -> None:
    """The PromQL scanner finds metric names and ignores functions, labels and keywords."""
    assert metric_names(expr) == names


@pytest.mark.parametrize(("where", "expr"), dashboard_exprs() + rule_exprs())
def test_queries_use_only_exported_metrics(where: str, expr: str) -> None:
    """Every dashboard and alert expression reads metrics the gateway or vLLM export."""
    unknown = metric_names(grafana_to_promql(expr)) - exported_names()
    assert not unknown, f"{where}: unknown metrics {sorted(unknown)}"


@pytest.mark.parametrize("exposed", sorted(VLLM_METRICS))
def test_vllm_metric_exists_in_vllm_source(exposed: str) -> None:
    """Each allowed vLLM metric is still defined, with the same kind, in vLLM's loggers.py."""
    spec = importlib.util.find_spec("vllm")
    if spec is None or not spec.submodule_search_locations:
        missing("vllm is not installed; `python dev.py setup` installs it and lifts this")
    source = Path(next(iter(spec.submodule_search_locations))) / "v1" / "metrics" / "loggers.py"
    name, kind = VLLM_METRICS[exposed]
    pattern = rf'self\._{kind}_cls\(\s*name="{re.escape(name)}"'
    assert re.search(pattern, source.read_text()), f"{name} ({kind}) not in {source}"


def test_dashboard_exprs_parse(tmp_path: Path) -> None:
    """Each dashboard expression, wrapped as a recording rule, passes promtool check rules."""
    rules = [
        {"record": f"dashboard:expr_{index}", "expr": grafana_to_promql(expr)}
        for index, (_, expr) in enumerate(dashboard_exprs())
    ]
    path = tmp_path / "dashboard-exprs.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    done = run_promtool("check", "rules", path)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda path: path.name)
def test_dashboard_structure(path: Path) -> None:
    """uid and title set, unique panel ids, every target with a refId and the provisioned uid."""
    dashboard = load(path)
    datasource = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())
    uid = datasource["datasources"][0]["uid"]
    assert dashboard["uid"] and dashboard["title"]
    ids = [panel["id"] for panel in panels(dashboard)]
    assert len(ids) == len(set(ids))
    for panel in panels(dashboard):
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"]), panel["title"]
        for target in panel.get("targets", []):
            assert target["refId"] and target["datasource"]["uid"] == uid, panel["title"]


def test_dashboard_provider_points_at_a_folder() -> None:
    """The dashboard provider is a file provider with a path to mount the JSON at."""
    provisioning = yaml.safe_load((GRAFANA / "provisioning/dashboards/llm-gateway.yml").read_text())
    (provider,) = provisioning["providers"]
    assert provider["type"] == "file" and provider["options"]["path"].startswith("/")
