"""GatewayMetrics: one set per registry, Prometheus names, listener events, exposition."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, Gauge
from prometheus_client.metrics import MetricWrapperBase

from app.observability.context import RequestContext
from app.observability.metrics import SHED_REASONS, GatewayMetrics, render_metrics
from tests.support.engine_registries import Deployments

REQUIRED = {
    "gateway_requests": ("counter", {"route", "model", "status"}),
    "gateway_request_duration_seconds": ("histogram", {"route", "model"}),
    "gateway_time_to_first_token_seconds": ("histogram", {"route", "model"}),
    "gateway_inter_token_latency_seconds": ("histogram", {"route", "model"}),
    "gateway_prompt_tokens": ("counter", {"model"}),
    "gateway_completion_tokens": ("counter", {"model"}),
    "gateway_requests_in_flight": ("gauge", set()),
    "gateway_queue_depth": ("gauge", {"priority"}),
    "gateway_queue_wait_seconds": ("histogram", set()),
    "gateway_requests_shed": ("counter", {"reason"}),
    "gateway_requests_timed_out": ("counter", set()),
    "gateway_breaker_state": ("gauge", set()),
    "gateway_breaker_transitions": ("counter", {"from_state", "to_state"}),
    "gateway_rate_limited": ("counter", {"key", "limit"}),
    "gateway_engine_up": ("gauge", set()),
    "gateway_engine_restarts": ("counter", {"deployment"}),
    "gateway_errors": ("counter", {"route", "code"}),
}


@pytest.fixture
def metrics() -> GatewayMetrics:
    return GatewayMetrics.for_registry(CollectorRegistry())


def value(metrics: GatewayMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_one_instance_per_registry() -> None:
    """for_registry returns the same object for a registry, and a new one for another."""
    registry = CollectorRegistry()
    first = GatewayMetrics.for_registry(registry)
    assert GatewayMetrics.for_registry(registry) is first
    assert GatewayMetrics.for_registry(CollectorRegistry()) is not first


def test_default_registry_can_be_asked_for_twice() -> None:
    """Several apps in one process share the default registry without duplicate errors."""
    assert GatewayMetrics.for_registry(REGISTRY) is GatewayMetrics.for_registry()


def test_required_names_types_and_labels(metrics: GatewayMetrics) -> None:
    """Every metric the issue names exists with its type and exact label names, under gateway_."""
    families = {family.name: family.type for family in metrics.registry.collect()}
    assert all(name.startswith("gateway_") for name in families)
    attributes = {
        next(iter(metric.describe())).name: metric
        for metric in vars(metrics).values()
        if isinstance(metric, MetricWrapperBase)
    }
    for name, (kind, labels) in REQUIRED.items():
        assert families[name] == kind, name
        if labels:  # .labels(**kw) raises unless kw names exactly the metric's labels
            attributes[name].labels(**{label: "x" for label in labels})


def test_shed_reasons_start_at_zero_and_unknown_reasons_are_refused(
    metrics: GatewayMetrics,
) -> None:
    """Each shed reason is exported as 0 before the first event; others raise ValueError."""
    for reason in SHED_REASONS:
        assert value(metrics, "gateway_requests_shed_total", reason=reason) == 0
    metrics.request_shed("queue_full")
    assert value(metrics, "gateway_requests_shed_total", reason="queue_full") == 1
    with pytest.raises(ValueError, match="unknown shed reason"):
        metrics.request_shed("bored")


def test_breaker_transition_sets_state_and_counts(metrics: GatewayMetrics) -> None:
    """State gauge is 0/1/2 for closed/half-open/open; pybreaker and underscore names work."""
    metrics.breaker_changed("closed", "open")
    assert value(metrics, "gateway_breaker_state") == 2
    metrics.breaker_changed("open", "half_open")
    assert value(metrics, "gateway_breaker_state") == 1
    metrics.breaker_changed("HALF-OPEN", "closed")
    assert value(metrics, "gateway_breaker_state") == 0
    labels = {"from_state": "open", "to_state": "half-open"}
    assert value(metrics, "gateway_breaker_transitions_total", **labels) == 1
    with pytest.raises(ValueError, match="unknown breaker state"):
        metrics.breaker_changed("closed", "ajar")


def test_listener_events(metrics: GatewayMetrics) -> None:
    """Queue, rate-limit and engine events land in their gauges and counters."""
    metrics.set_queue_depth(priority=0, depth=3)
    metrics.set_queue_capacity(64)
    metrics.rate_limit_rejected("team-a", "tokens")
    metrics.request_timed_out()
    metrics.set_engine_up(True)
    metrics.engine_restarted("local")
    assert value(metrics, "gateway_queue_depth", priority="0") == 3
    assert value(metrics, "gateway_queue_capacity") == 64
    assert value(metrics, "gateway_rate_limited_total", key="team-a", limit="tokens") == 1
    assert value(metrics, "gateway_requests_timed_out_total") == 1
    assert value(metrics, "gateway_engine_up") == 1
    assert value(metrics, "gateway_engine_restarts_total", deployment="local") == 1
    with pytest.raises(ValueError, match="unknown limit"):
        metrics.rate_limit_rejected("team-a", "vibes")


def test_render_holds_the_gateways_metrics_and_its_engines() -> None:
    """The exposition holds gateway_* and each watched engine's own registry (vLLM's)."""
    metrics = GatewayMetrics.for_registry(CollectorRegistry())
    engine = CollectorRegistry()
    Gauge("vllm:test_only_usage", "stand-in for a vLLM gauge", registry=engine).set(0.5)
    deployments = Deployments({"local": engine})
    metrics.engines.watch(deployments)
    text = render_metrics(metrics).decode()
    assert "gateway_requests_in_flight 0.0" in text
    assert 'vllm:test_only_usage{deployment="local"} 0.5' in text


def test_recorder_observes_ttft_then_one_itl_per_step(metrics: GatewayMetrics) -> None:
    """The first step observes TTFT; each later step one inter-token latency; empty steps none."""
    ctx = RequestContext("rid")
    recorder = metrics.recorder("m", ctx)
    recorder.token(2)
    recorder.token(0)
    recorder.token(3)
    recorder.token(1)
    labels = {"route": "other", "model": "m"}
    assert value(metrics, "gateway_time_to_first_token_seconds_count", **labels) == 1
    assert value(metrics, "gateway_inter_token_latency_seconds_count", **labels) == 2
    assert ctx.ttft_s is not None and ctx.ttft_s >= 0


def test_recorder_finish_counts_tokens_once(metrics: GatewayMetrics) -> None:
    """finish() counts prompt and (by default, streamed) completion tokens once."""
    ctx = RequestContext("rid")
    recorder = metrics.recorder("m", ctx)
    recorder.token(4)
    recorder.admitted(0.25, priority=1)
    recorder.finish(prompt_tokens=7)
    recorder.finish(prompt_tokens=7)
    assert value(metrics, "gateway_prompt_tokens_total", model="m") == 7
    assert value(metrics, "gateway_completion_tokens_total", model="m") == 4
    assert value(metrics, "gateway_queue_wait_seconds_count") == 1
    assert (ctx.prompt_tokens, ctx.completion_tokens, ctx.queue_wait_s) == (7, 4, 0.25)
    assert ctx.model == "m" and ctx.error_code is None


def test_recorder_finish_with_error_marks_the_outcome(metrics: GatewayMetrics) -> None:
    """An error after a streamed 200 sets the outcome status, code and reason on the context."""
    ctx = RequestContext("rid", status=None)
    metrics.recorder("m", ctx).finish(503, 5, 2, "engine_unavailable", "engine died")
    assert (ctx.status, ctx.error_code, ctx.error_reason) == (
        503,
        "engine_unavailable",
        "engine died",
    )


def test_recorder_keeps_content_only_when_allowed(metrics: GatewayMetrics) -> None:
    """Prompt and completion are kept for the log only with LOG_PROMPTS on."""
    quiet, loud = RequestContext("a"), RequestContext("b", log_prompts=True)
    metrics.recorder("m", quiet).content("hi", "there")
    metrics.recorder("m", loud).content("hi", "there")
    assert (quiet.prompt, quiet.completion) == (None, None)
    assert (loud.prompt, loud.completion) == ("hi", "there")


def test_recorder_outside_a_request_uses_a_detached_context(metrics: GatewayMetrics) -> None:
    """Services called without the middleware still record, under route 'other'."""
    recorder = metrics.recorder("m")
    recorder.token(1)
    assert recorder.ctx.route == "other" and len(recorder.ctx.request_id) == 32


def test_collect_hooks_feed_queue_depths_and_survive_failures(metrics: GatewayMetrics) -> None:
    """Hooks run at each render; drained priorities drop to 0; a failing hook is skipped."""
    depths = iter([{0: 3, 5: 2}, {0: 1}])

    def broken() -> None:
        raise RuntimeError("stats unavailable")

    metrics.on_collect(broken)
    metrics.on_collect(lambda: metrics.set_queue_depths(next(depths), capacity=64))
    render_metrics(metrics)
    assert value(metrics, "gateway_queue_depth", priority="5") == 2
    render_metrics(metrics)
    assert value(metrics, "gateway_queue_depth", priority="0") == 1
    assert value(metrics, "gateway_queue_depth", priority="5") == 0
    assert value(metrics, "gateway_queue_capacity") == 64
