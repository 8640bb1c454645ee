"""alerts/*-rules.yml (the gateway's, and the cluster's kube-state-metrics rules): valid for
promtool, unit-tested, documented in the runbooks."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.observability.promql import run_promtool

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "alerts" / "gateway-rules.yml"
RULE_FILES = sorted((ROOT / "alerts").glob("*-rules.yml"))
UNIT_TESTS = sorted((ROOT / "alerts" / "tests").glob("*.yml"))
RUNBOOKS = ROOT / "docs" / "runbooks.md"
PROMETHEUS_CONFIG = ROOT / "infra" / "prometheus" / "prometheus.yml"


def alert_rules() -> list[dict[str, Any]]:
    groups = [group for path in RULE_FILES for group in yaml.safe_load(path.read_text())["groups"]]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def github_anchor(heading: str) -> str:
    """GitHub's anchor for a Markdown heading: lower case, punctuation dropped, '-' for spaces."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_promtool_check_rules() -> None:
    """promtool (2.42, as in CI) accepts both rule files."""
    assert [path.name for path in RULE_FILES] == ["gateway-rules.yml", "kubernetes-rules.yml"]
    done = run_promtool("check", "rules", *RULE_FILES)
    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_unit_tests_pass() -> None:
    """Every promtool unit test in alerts/tests passes."""
    assert UNIT_TESTS, "no promtool unit tests found"
    done = run_promtool("test", "rules", *UNIT_TESTS)
    assert done.returncode == 0, done.stdout + done.stderr


def test_prometheus_config_loads_the_rules() -> None:
    """The scrape config is valid and its rule_files resolve to the alert rules."""
    done = run_promtool("check", "config", PROMETHEUS_CONFIG)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "gateway-rules.yml" in done.stdout + done.stderr


def test_every_rule_file_has_unit_tests() -> None:
    """Each rule file is the rule_files entry of at least one promtool unit test file."""
    tested = {
        (path.parent / name).resolve()
        for path in UNIT_TESTS
        for name in yaml.safe_load(path.read_text())["rule_files"]
    }
    assert set(RULE_FILES) <= tested


def test_kubernetes_rules_read_kube_state_metrics_not_scrapes() -> None:
    """The replica alerts compare kube-state-metrics' desired and available replicas of the
    gateway Deployment; none of them relies on `up`, which has no series for Pending pods."""
    rules = yaml.safe_load((ROOT / "alerts" / "kubernetes-rules.yml").read_text())["groups"]
    exprs = [rule["expr"] for group in rules for rule in group["rules"]]
    assert exprs and all("up{" not in expr and "up ==" not in expr for expr in exprs)
    for expr in exprs:
        assert "kube_deployment_status_replicas_available" in expr
        assert "kube_deployment_spec_replicas" in expr
        assert 'namespace="llm-gateway", deployment="llm-gateway"' in expr


def test_every_alert_has_a_unit_test_where_it_fires() -> None:
    """Each alert appears in at least one unit test case that expects it to fire."""
    fired = set()
    for path in UNIT_TESTS:
        for test in yaml.safe_load(path.read_text())["tests"]:
            for case in test.get("alert_rule_test", []):
                if case.get("exp_alerts"):
                    fired.add(case["alertname"])
    assert {rule["alert"] for rule in alert_rules()} <= fired


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda rule: rule["alert"])
def test_alert_has_severity_summary_and_a_runbook_section(rule: dict[str, Any]) -> None:
    """Each alert has a severity, a summary and a runbook_url whose section exists."""
    anchors = {
        github_anchor(line.lstrip("#"))
        for line in RUNBOOKS.read_text().splitlines()
        if line.startswith("## ")
    }
    assert rule["labels"]["severity"] in {"critical", "warning"}
    assert rule["annotations"]["summary"]
    page, _, anchor = rule["annotations"]["runbook_url"].partition("#")
    assert page.endswith("/docs/runbooks.md")
    assert anchor == rule["alert"].lower() and anchor in anchors
