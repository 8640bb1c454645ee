"""AlertEvaluator: the rules of alerts/gateway-rules.yml, evaluated in-process."""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, Gauge

from app.observability.alert_rules import DEFAULT_RULES
from app.observability.alerts import AlertEvaluator
from app.observability.metrics import GatewayMetrics
from app.observability.settings import ObservabilitySettings

RULES_FILE = Path(__file__).resolve().parents[2] / "alerts" / "gateway-rules.yml"
DURATION = re.compile(r"(\d+)([smh])")
UNITS = {"s": 1, "m": 60, "h": 3600}


class Clock:
    """A settable clock: the only fake these tests need."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Harness:
    """A private registry with the gateway's metrics, a vLLM-like gauge and an evaluator."""

    def __init__(self, **settings: Any) -> None:
        self.registry = CollectorRegistry()
        self.metrics = GatewayMetrics.for_registry(self.registry)
        self.kv_cache = Gauge(
            "vllm:kv_cache_usage_perc", "stand-in", ["engine"], registry=self.registry
        )
        self.clock = Clock()
        self.settings = ObservabilitySettings(**settings)
        self.alerts = AlertEvaluator([self.registry], self.settings, self.clock)
        self.metrics.set_engine_up(True)

    def requests(self, status: str, n: int) -> None:
        self.metrics.requests.labels("/v1/chat/completions", "m", status).inc(n)

    def run(self, minutes: int, step_s: float = 15.0, each_step: Any = None) -> set[str]:
        """Evaluate every ``step_s`` for ``minutes``; returns the names firing at the end."""
        for _ in range(int(minutes * 60 / step_s)):
            if each_step is not None:
                each_step()
            self.clock.advance(step_s)
            self.alerts.evaluate()
        return {alert.name for alert in self.alerts.firing()}


def test_quiet_gateway_fires_nothing() -> None:
    """Steady successful traffic with the engine up fires no alert."""
    h = Harness()
    assert h.run(20, each_step=lambda: h.requests("200", 10)) == set()


def test_error_ratio_goes_pending_then_firing_then_resolves() -> None:
    """Pending until its 'for' has passed, then firing; resolved lands in history."""
    h = Harness()

    def failing() -> None:
        h.requests("200", 8)
        h.requests("503", 2)

    assert "GatewayHighErrorRatio" not in h.run(4, each_step=failing)
    assert [a["name"] for a in h.alerts.report()["pending"]] == ["GatewayHighErrorRatio"]
    assert "GatewayHighErrorRatio" in h.run(3, each_step=failing)
    assert "GatewayHighErrorRatio" not in h.run(10, each_step=lambda: h.requests("200", 10))
    states = [(e.name, e.state) for e in h.alerts.history]
    assert states == [("GatewayHighErrorRatio", "firing"), ("GatewayHighErrorRatio", "resolved")]


def test_error_ratio_needs_enough_requests() -> None:
    """A 50% error ratio on a trickle below ALERT_MIN_REQUESTS stays quiet."""
    h = Harness()
    steps = iter(range(10_000))

    def trickle() -> None:
        h.requests("500" if next(steps) % 2 else "200", 1)

    assert "GatewayHighErrorRatio" not in h.run(15, step_s=60, each_step=trickle)


def test_latency_and_ttft_quantiles_fire_above_objective() -> None:
    """p95 latency above ALERT_P95_LATENCY_S and TTFT above ALERT_P95_TTFT_S fire after 10m."""
    h = Harness(alert_p95_latency_s=10, alert_p95_ttft_s=1)
    duration = h.metrics.request_duration.labels("/v1/chat/completions", "m")
    ttft = h.metrics.ttft.labels("/v1/chat/completions", "m")

    def slow() -> None:
        h.requests("200", 1)
        duration.observe(50)
        ttft.observe(4)

    firing = h.run(12, each_step=slow)
    assert {"GatewayHighLatencyP95", "GatewayHighTTFTP95"} <= firing


def test_gauge_rules() -> None:
    """Breaker open, full queue, engine down and a full KV cache fire after their 'for'."""
    h = Harness()
    h.metrics.breaker_changed("closed", "open")
    h.metrics.set_queue_capacity(10)
    h.metrics.set_queue_depth(0, 9)
    h.metrics.set_engine_up(False)
    h.kv_cache.labels("0").set(0.99)
    assert h.run(11) >= {
        "GatewayCircuitBreakerOpen",
        "GatewayQueueSaturated",
        "GatewayEngineDown",
        "GatewayKVCacheNearFull",
    }


def test_unsized_queue_never_counts_as_saturated() -> None:
    """Without a queue capacity (no queue yet) depth alone does not fire."""
    h = Harness()
    h.metrics.set_queue_depth(0, 100)
    assert "GatewayQueueSaturated" not in h.run(10)


def test_shedding_rate_limits_and_restarts() -> None:
    """Shedding, a rate-limit surge and repeated engine restarts each fire."""
    h = Harness()
    steps = iter(range(10_000))

    def overload() -> None:
        h.requests("200", 4)
        h.requests("429", 4)
        for _ in range(2):
            h.metrics.request_shed("queue_full")
        for _ in range(4):
            h.metrics.rate_limit_rejected("team-a", "requests")
        if next(steps) in (1, 2, 3):
            h.metrics.engine_restarted("local")

    firing = h.run(12, each_step=overload)
    assert {"GatewayRequestsShed", "GatewayRateLimitSurge", "GatewayEngineRestarting"} <= firing


def test_a_loop_stalled_a_fifth_of_the_time_fires_and_brief_stalls_do_not() -> None:
    """12 s of stall a minute (20 %) for 15 minutes fires GatewayEventLoopStalled; 3 s a
    minute (5 %, under the 10 % threshold) does not."""

    def stalling(per_minute_s: float) -> set[str]:
        h = Harness()
        total = [0.0]

        def stall() -> None:
            h.requests("200", 5)
            total[0] += per_minute_s / 4  # a step is 15 s
            h.metrics.set_loop_stall(total[0])

        return h.run(15, each_step=stall)

    assert "GatewayEventLoopStalled" in stalling(12.0)
    assert "GatewayEventLoopStalled" not in stalling(3.0)


def test_no_traffic_fires_only_while_the_engine_is_up() -> None:
    """Twenty quiet minutes with the engine up fire; with the engine down they do not."""
    up = Harness()
    assert "GatewayNoTraffic" in up.run(25)
    down = Harness()
    down.metrics.set_engine_up(False)
    assert "GatewayNoTraffic" not in down.run(25)


def test_history_is_bounded() -> None:
    """Only the last ALERT_HISTORY_SIZE transitions are kept, newest first in the report."""
    h = Harness(alert_history_size=3)
    for _ in range(3):
        h.metrics.breaker_changed("closed", "open")
        h.run(2)
        h.metrics.breaker_changed("open", "closed")
        h.run(1)
    report = h.alerts.report()
    assert len(report["history"]) == 3
    assert report["history"][0]["state"] == "resolved"


def test_tight_polling_does_not_grow_snapshots() -> None:
    """Evaluating every 100 ms keeps at most one snapshot per half interval."""
    h = Harness()
    h.run(1, step_s=0.1)
    assert h.alerts.retained_snapshots <= 60 / (h.settings.alert_eval_interval_s / 2) + 2


def _seconds(duration: str | None) -> float:
    return sum(int(n) * UNITS[unit] for n, unit in DURATION.findall(duration or "0s"))


def _yaml_rules() -> dict[str, dict[str, Any]]:
    groups = yaml.safe_load(RULES_FILE.read_text())["groups"]
    return {rule["alert"]: rule for group in groups for rule in group["rules"]}


@pytest.mark.parametrize("rule", DEFAULT_RULES, ids=lambda rule: rule.name)
def test_in_process_rule_matches_the_prometheus_rule(rule: Any) -> None:
    """Same name, severity and 'for' as the YAML, whose threshold is the setting's default."""
    prometheus = _yaml_rules()[rule.name]
    assert prometheus["labels"]["severity"] == rule.severity
    assert _seconds(prometheus.get("for")) == rule.for_s
    if rule.setting:
        threshold = f"{getattr(ObservabilitySettings(), rule.setting):g}"
        assert re.search(rf"(?<![\d.]){re.escape(threshold)}(?![\d.])", prometheus["expr"])


def test_every_prometheus_rule_is_evaluated_in_process_but_target_down() -> None:
    """Only GatewayTargetDown, which a process cannot see, is left to Prometheus."""
    assert set(_yaml_rules()) - {rule.name for rule in DEFAULT_RULES} == {"GatewayTargetDown"}


def test_transitions_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    """Firing is logged at WARNING and resolving at INFO, naming the alert."""
    caplog.set_level(logging.INFO, logger="app.observability.alerts")
    h = Harness()
    h.metrics.breaker_changed("closed", "open")
    h.run(2)
    h.metrics.breaker_changed("open", "closed")
    h.run(1)
    lines = [(r.levelno, r.getMessage(), r.__dict__["alert"]) for r in caplog.records]
    assert lines == [
        (logging.WARNING, "alert firing", "GatewayCircuitBreakerOpen"),
        (logging.INFO, "alert resolved", "GatewayCircuitBreakerOpen"),
    ]


def test_run_evaluates_until_cancelled() -> None:
    """run() evaluates at once and then every interval, and stops when cancelled."""
    h = Harness(alert_eval_interval_s=0.01)
    h.metrics.breaker_changed("closed", "open")

    async def scenario() -> None:
        task = asyncio.create_task(h.alerts.run())
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert [a["name"] for a in h.alerts.report()["pending"]] == ["GatewayCircuitBreakerOpen"]


def test_for_metrics_refreshes_pull_gauges_before_each_evaluation() -> None:
    """An evaluator built for GatewayMetrics runs its collect hooks before reading samples."""
    metrics = GatewayMetrics.for_registry(CollectorRegistry())
    metrics.on_collect(lambda: metrics.set_queue_depths({0: 10}, capacity=10))
    clock = Clock()
    alerts = AlertEvaluator.for_metrics(metrics, ObservabilitySettings(), clock)
    alerts.evaluate()
    clock.advance(301)
    assert "GatewayQueueSaturated" in {alert.name for alert in alerts.evaluate()}
