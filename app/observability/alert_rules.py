"""The in-process alert rules: the conditions of ``alerts/gateway-rules.yml``, in Python.

Each rule has the Prometheus rule's name, severity and ``for``; its threshold is the
``ALERT_*`` setting named in ``setting`` (whose default is the number in the YAML — a test
checks both stay in step). ``GatewayTargetDown`` exists only in Prometheus: a process
cannot see itself fail to be scraped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from app.observability.samples import Window
from app.observability.settings import ObservabilitySettings

REQUESTS = "gateway_requests_total"
MINUTE = 60.0


@dataclass(frozen=True, slots=True)
class Reading:
    """What a rule measured: ``value`` is ``None`` when there was nothing to measure."""

    value: float | None
    threshold: float
    firing: bool


Check = Callable[[Window, ObservabilitySettings], Reading]


@dataclass(frozen=True, slots=True)
class AlertRule:
    name: str
    severity: Literal["critical", "warning"]
    for_s: float
    window_s: float  # 0: reads gauges now
    summary: str
    setting: str  # the ObservabilitySettings field holding the threshold
    reads: tuple[str, ...]  # sample names the check needs
    check: Check


def _ratio(w: Window, s: ObservabilitySettings, numerator: float | None, limit: float) -> Reading:
    total = w.increase(REQUESTS)
    if numerator is None or total is None or total < s.alert_min_requests:
        return Reading(None, limit, False)
    ratio = numerator / total
    return Reading(ratio, limit, ratio > limit)


def _above(value: float | None, limit: float, inclusive: bool = False) -> Reading:
    firing = value is not None and (value >= limit if inclusive else value > limit)
    return Reading(value, limit, firing)


def error_ratio(w: Window, s: ObservabilitySettings) -> Reading:
    errors = w.increase(REQUESTS, lambda labels: labels["status"].startswith("5"))
    return _ratio(w, s, errors, s.alert_error_ratio)


def p95_latency(w: Window, s: ObservabilitySettings) -> Reading:
    return _above(w.quantile(0.95, "gateway_request_duration_seconds"), s.alert_p95_latency_s)


def p95_ttft(w: Window, s: ObservabilitySettings) -> Reading:
    return _above(w.quantile(0.95, "gateway_time_to_first_token_seconds"), s.alert_p95_ttft_s)


def breaker_open(w: Window, s: ObservabilitySettings) -> Reading:
    return _above(max(w.gauges("gateway_breaker_state"), default=None), 2, inclusive=True)


def queue_saturated(w: Window, s: ObservabilitySettings) -> Reading:
    capacity = max(w.gauges("gateway_queue_capacity"), default=0.0)
    depth = sum(w.gauges("gateway_queue_depth"))
    used = depth / capacity if capacity > 0 else None
    return _above(used, s.alert_queue_saturation, inclusive=True)


def requests_shed(w: Window, s: ObservabilitySettings) -> Reading:
    shed = w.increase("gateway_requests_shed_total")
    per_s = shed / w.seconds if shed is not None and w.seconds > 0 else None
    return _above(per_s, s.alert_shed_per_s)


def engine_down(w: Window, s: ObservabilitySettings) -> Reading:
    up = max(w.gauges("gateway_engine_up"), default=None)
    return Reading(up, 0, up == 0)


def deployment_down(w: Window, s: ObservabilitySettings) -> Reading:
    up = min(w.gauges("gateway_deployment_up"), default=None)
    return Reading(up, 0, up == 0)


def model_unavailable(w: Window, s: ObservabilitySettings) -> Reading:
    available = min(w.gauges("gateway_model_available"), default=None)
    return Reading(available, 0, available == 0)


def engine_restarting(w: Window, s: ObservabilitySettings) -> Reading:
    restarts = w.increase("gateway_engine_restarts_total")
    return _above(restarts, s.alert_engine_restarts, inclusive=True)


def rate_limit_surge(w: Window, s: ObservabilitySettings) -> Reading:
    return _ratio(w, s, w.increase("gateway_rate_limited_total"), s.alert_rate_limited_ratio)


def rate_limit_fail_open(w: Window, s: ObservabilitySettings) -> Reading:
    return _above(w.increase("gateway_rate_limit_fail_open_total"), 0)


def kv_cache_near_full(w: Window, s: ObservabilitySettings) -> Reading:
    usage = max(w.gauges("vllm:kv_cache_usage_perc"), default=None)
    return _above(usage, s.alert_kv_cache_usage)


def loop_stalled(w: Window, s: ObservabilitySettings) -> Reading:
    stalled = w.increase("gateway_event_loop_stall_seconds_total")
    share = stalled / w.seconds if stalled is not None and w.seconds > 0 else None
    return _above(share, s.alert_loop_stall_ratio)


def no_traffic(w: Window, s: ObservabilitySettings) -> Reading:
    requests = w.increase(REQUESTS)
    engine_up = max(w.gauges("gateway_engine_up"), default=0.0) == 1
    return Reading(requests, 0, requests == 0 and engine_up)


def _histogram(name: str) -> tuple[str, ...]:
    return (f"{name}_bucket",)


DEFAULT_RULES: tuple[AlertRule, ...] = (
    AlertRule("GatewayHighErrorRatio", "critical", 5 * MINUTE, 5 * MINUTE,
              "More than the allowed share of requests fail with 5xx.",
              "alert_error_ratio", (REQUESTS,), error_ratio),
    AlertRule("GatewayHighLatencyP95", "warning", 10 * MINUTE, 5 * MINUTE,
              "p95 end-to-end latency is above its objective.",
              "alert_p95_latency_s", _histogram("gateway_request_duration_seconds"), p95_latency),
    AlertRule("GatewayHighTTFTP95", "warning", 10 * MINUTE, 5 * MINUTE,
              "p95 time to first token is above its objective.",
              "alert_p95_ttft_s", _histogram("gateway_time_to_first_token_seconds"), p95_ttft),
    AlertRule("GatewayCircuitBreakerOpen", "critical", MINUTE, 0,
              "The circuit breaker is open: generation requests are refused.",
              "", ("gateway_breaker_state",), breaker_open),
    AlertRule("GatewayQueueSaturated", "warning", 5 * MINUTE, 0,
              "The admission queue is nearly full.",
              "alert_queue_saturation", ("gateway_queue_depth", "gateway_queue_capacity"),
              queue_saturated),
    AlertRule("GatewayRequestsShed", "warning", 5 * MINUTE, 5 * MINUTE,
              "Requests are being refused to protect the engine.",
              "alert_shed_per_s", ("gateway_requests_shed_total",), requests_shed),
    AlertRule("GatewayEngineDown", "critical", 5 * MINUTE, 0,
              "The inference engine is not up.",
              "", ("gateway_engine_up",), engine_down),
    AlertRule("GatewayDeploymentDown", "warning", 2 * MINUTE, 0,
              "A deployment is down (ejected, not loaded, or its breaker is open).",
              "", ("gateway_deployment_up",), deployment_down),
    AlertRule("GatewayModelUnavailable", "critical", MINUTE, 0,
              "A model has no live deployment and no live fallback.",
              "", ("gateway_model_available",), model_unavailable),
    AlertRule("GatewayEngineRestarting", "critical", 0, 30 * MINUTE,
              "The inference engine keeps restarting.",
              "alert_engine_restarts", ("gateway_engine_restarts_total",), engine_restarting),
    AlertRule("GatewayRateLimitSurge", "warning", 10 * MINUTE, 5 * MINUTE,
              "A large share of requests is being rate limited.",
              "alert_rate_limited_ratio", (REQUESTS, "gateway_rate_limited_total"),
              rate_limit_surge),
    AlertRule("GatewayRateLimitFailOpen", "warning", 5 * MINUTE, 5 * MINUTE,
              "Rate limiting fails open: its Redis is unreachable.",
              "", ("gateway_rate_limit_fail_open_total",), rate_limit_fail_open),
    AlertRule("GatewayKVCacheNearFull", "warning", 10 * MINUTE, 0,
              "vLLM's KV cache is nearly full: requests queue and get preempted.",
              "alert_kv_cache_usage", ("vllm:kv_cache_usage_perc",), kv_cache_near_full),
    AlertRule("GatewayEventLoopStalled", "warning", 10 * MINUTE, 5 * MINUTE,
              "The event loop is often unable to run: the replica is short of CPU.",
              "alert_loop_stall_ratio", ("gateway_event_loop_stall_seconds_total",),
              loop_stalled),
    AlertRule("GatewayNoTraffic", "warning", 10 * MINUTE, 10 * MINUTE,
              "The engine is up but no request has arrived.",
              "", (REQUESTS, "gateway_engine_up"), no_traffic),
)  # fmt: skip
