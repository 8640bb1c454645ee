"""The gateway's Prometheus metrics, all under the one prefix ``gateway_``.

Metric objects are created once per registry (:meth:`GatewayMetrics.for_registry`), so any
number of apps in one process share them without "Duplicated timeseries" errors. Who
records what:

- :class:`~app.observability.middleware.RequestContextMiddleware`: ``gateway_requests_total``,
  ``gateway_request_duration_seconds`` (until the last body byte), ``gateway_errors_total``,
  ``gateway_requests_in_flight`` — for every route but ``/metrics``, health and alerts.
- :class:`~app.observability.recorder.RequestRecorder` (the service, per request): TTFT,
  inter-token latency, tokens, queue wait.
- listeners (queue, breaker, rate limiter, engine manager): the event methods below.

vLLM's own ``vllm:*`` metrics live on a registry per engine; :class:`EngineMetrics`, on the
gateway's registry, serves them with a ``deployment`` label, so one scrape returns both.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest

from app.observability.engine_metrics import EngineMetrics
from app.observability.recorder import RequestRecorder

if TYPE_CHECKING:
    from app.observability.context import RequestContext

# LLM latencies span three orders of magnitude: a cached 1-token answer to minutes of output.
REQUEST_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
ITL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5)
QUEUE_BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

SHED_REASONS = ("queue_full", "queue_timeout", "overloaded", "draining")
RATE_LIMITS = ("requests", "tokens", "concurrency")
RATE_LIMIT_OPERATIONS = ("charge", "refund", "peek")
RESUME_OUTCOMES = ("resumed", "failed", "not_resumable")
CACHE_EVENTS = ("hit", "miss", "bypass", "store", "eviction")
BREAKER_STATES = {"closed": 0, "half-open": 1, "open": 2}

_cache: weakref.WeakKeyDictionary[CollectorRegistry, GatewayMetrics] = weakref.WeakKeyDictionary()
_cache_lock = threading.Lock()
log = logging.getLogger(__name__)


class GatewayMetrics:
    """Every ``gateway_*`` metric, registered on one registry; event methods for listeners."""

    def __init__(self, registry: CollectorRegistry) -> None:
        """Register every metric on ``registry`` (twice raises: use :meth:`for_registry`)."""
        self.registry = registry
        self._hooks: list[Callable[[], None]] = []
        self._priorities: set[int] = set()
        self._define_request_metrics(registry)
        self._define_token_metrics(registry)
        self._define_admission_metrics(registry)
        self._define_engine_metrics(registry)
        self._define_deployment_metrics(registry)
        self.engines = EngineMetrics()
        registry.register(self.engines)

    @classmethod
    def for_registry(cls, registry: CollectorRegistry = REGISTRY) -> GatewayMetrics:
        """The one instance for ``registry``, created on first use (thread-safe)."""
        with _cache_lock:
            metrics = _cache.get(registry)
            if metrics is None:
                metrics = _cache[registry] = cls(registry)
            return metrics

    def _define_request_metrics(self, r: CollectorRegistry) -> None:
        rm = ("route", "model")
        self.requests = Counter(
            "gateway_requests", "Requests answered, by outcome status.", [*rm, "status"], registry=r
        )
        self.request_duration = Histogram(
            "gateway_request_duration_seconds",
            "From request start to the last response byte.",
            rm,
            buckets=REQUEST_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "gateway_requests_in_flight", "Requests being served now.", registry=r
        )
        self.errors = Counter(
            "gateway_errors", "Error responses, by error code.", ["route", "code"], registry=r
        )

    def _define_token_metrics(self, r: CollectorRegistry) -> None:
        rm = ("route", "model")
        self.ttft = Histogram(
            "gateway_time_to_first_token_seconds",
            "From request start to the first generated token.",
            rm,
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.itl = Histogram(
            "gateway_inter_token_latency_seconds",
            "Time between consecutive engine steps of one request.",
            rm,
            buckets=ITL_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter(
            "gateway_prompt_tokens", "Prompt tokens processed.", ["model"], registry=r
        )
        self.completion_tokens = Counter(
            "gateway_completion_tokens", "Completion tokens generated.", ["model"], registry=r
        )

    def _define_admission_metrics(self, r: CollectorRegistry) -> None:
        self.queue_depth = Gauge(
            "gateway_queue_depth", "Requests waiting for admission.", ["priority"], registry=r
        )
        self.queue_capacity = Gauge(
            "gateway_queue_capacity", "Most requests the admission queue holds.", registry=r
        )
        self.queue_wait = Histogram(
            "gateway_queue_wait_seconds",
            "Time from arrival to admission.",
            buckets=QUEUE_BUCKETS,
            registry=r,
        )
        self.shed = Counter(
            "gateway_requests_shed",
            "Requests refused to protect the engine.",
            ["reason"],
            registry=r,
        )
        self.timed_out = Counter(
            "gateway_requests_timed_out", "Requests that ran past their deadline.", registry=r
        )
        self.rate_limited = Counter(
            "gateway_rate_limited", "Rate-limit rejections.", ["key", "limit"], registry=r
        )
        self.rate_limit_fail_open = Counter(
            "gateway_rate_limit_fail_open",
            "Requests served without charging (or refunds lost) because the rate-limit "
            "storage was unreachable.",
            ["operation"],
            registry=r,
        )
        for operation in RATE_LIMIT_OPERATIONS:
            self.rate_limit_fail_open.labels(operation)
        for reason in SHED_REASONS:  # so rate() sees a 0 before the first event
            self.shed.labels(reason)

    def _define_engine_metrics(self, r: CollectorRegistry) -> None:
        self.breaker_state = Gauge(
            "gateway_breaker_state", "Circuit breaker: 0 closed, 1 half-open, 2 open.", registry=r
        )
        self.breaker_transitions = Counter(
            "gateway_breaker_transitions",
            "Circuit breaker state changes.",
            ["from_state", "to_state"],
            registry=r,
        )
        self.engine_up = Gauge(
            "gateway_engine_up", "1 when the engine is loaded and healthy.", registry=r
        )
        self.engine_restarts = Counter(
            "gateway_engine_restarts",
            "Engine restarts after a failure, by local deployment.",
            ["deployment"],
            registry=r,
        )
        self.loop_stall = Counter(
            "gateway_event_loop_stall_seconds",
            "Time the gateway's event loop could run nothing (a starved CPU, a blocking "
            "call): beyond 20 ms late on a 50 ms tick.",
            registry=r,
        )
        self._loop_stall_seen = 0.0

    def _define_deployment_metrics(self, r: CollectorRegistry) -> None:
        # Labels come from the catalogue (model ids, deployment names): bounded by it.
        self.deployment_requests = Counter(
            "gateway_deployment_requests",
            "Requests a deployment ran, by outcome (ok, failed, retried, client_error).",
            ["model", "deployment", "outcome"],
            registry=r,
        )
        self.deployment_duration = Histogram(
            "gateway_deployment_request_duration_seconds",
            "From handing a request to a deployment to its end.",
            ["deployment"],
            buckets=REQUEST_BUCKETS,
            registry=r,
        )
        self.deployment_in_flight = Gauge(
            "gateway_deployment_in_flight",
            "Requests running on a deployment.",
            ["deployment"],
            registry=r,
        )
        self.deployment_up = Gauge(
            "gateway_deployment_up",
            "1 while a deployment is healthy and its breaker lets requests through.",
            ["model", "deployment"],
            registry=r,
        )
        self.deployment_breaker_state = Gauge(
            "gateway_deployment_breaker_state",
            "A deployment's circuit breaker: 0 closed, 1 half-open, 2 open.",
            ["deployment"],
            registry=r,
        )
        self.resumed = Counter(
            "gateway_resumed_requests",
            "Requests whose deployment failed mid-stream: resumed elsewhere, failed to, or "
            "not resumable.",
            ["outcome"],
            registry=r,
        )
        for outcome in RESUME_OUTCOMES:
            self.resumed.labels(outcome)
        self.cache_events = Counter(
            "gateway_cache",
            "Response cache: hits, misses, bypasses (not cacheable, no-cache, storage down), "
            "stores and evictions.",
            ["event"],
            registry=r,
        )
        for event in CACHE_EVENTS:
            self.cache_events.labels(event)
        self.cache_bytes = Gauge(
            "gateway_cache_bytes", "Bytes held by the in-process response cache.", registry=r
        )
        self.cache_entries = Gauge(
            "gateway_cache_entries", "Answers held by the in-process response cache.", registry=r
        )
        self.model_available = Gauge(
            "gateway_model_available",
            "1 while a model has a live deployment or a live fallback.",
            ["model"],
            registry=r,
        )

    # -- per request --------------------------------------------------------------------------

    def recorder(self, model: str, context: RequestContext | None = None) -> RequestRecorder:
        """A recorder for one request; binds to the current request's context by default."""
        return RequestRecorder(self, model, context)

    # -- gauges read on demand --------------------------------------------------------------

    def on_collect(self, hook: Callable[[], None]) -> Callable[[], None]:
        """Run ``hook`` before every ``/metrics`` render and alert evaluation.

        For state that is cheaper to read than to track (queue depth from
        ``PriorityAdmission.stats()``). A failing hook is logged and skipped. Returns
        what removes it again.
        """
        self._hooks.append(hook)
        return lambda: self._hooks.remove(hook)

    def refresh(self) -> None:
        """Run the :meth:`on_collect` hooks."""
        for hook in self._hooks:
            try:
                hook()
            except Exception:  # a broken hook must not break scraping
                log.exception("metrics hook failed")

    def set_queue_depths(self, depths: Mapping[int, int], capacity: int | None = None) -> None:
        """Queue depth per priority; priorities missing from ``depths`` drop to 0."""
        for priority in self._priorities - set(depths):
            self.queue_depth.labels(str(priority)).set(0)
        for priority, depth in depths.items():
            self.queue_depth.labels(str(priority)).set(depth)
        self._priorities |= set(depths)
        if capacity is not None:
            self.queue_capacity.set(capacity)

    # -- events from listeners ----------------------------------------------------------------

    def set_queue_depth(self, priority: int, depth: int) -> None:
        self.queue_depth.labels(str(priority)).set(depth)
        self._priorities.add(priority)

    def set_queue_capacity(self, capacity: int) -> None:
        self.queue_capacity.set(capacity)

    def request_shed(self, reason: str) -> None:
        """Count a refused request; ``reason`` is one of :data:`SHED_REASONS`."""
        if reason not in SHED_REASONS:
            raise ValueError(f"unknown shed reason {reason!r}; expected one of {SHED_REASONS}")
        self.shed.labels(reason).inc()

    def request_timed_out(self) -> None:
        self.timed_out.inc()

    def rate_limit_rejected(self, key_name: str, limit: str) -> None:
        """Count a 429 for the key's *name* (never the key); ``limit`` in :data:`RATE_LIMITS`."""
        if limit not in RATE_LIMITS:
            raise ValueError(f"unknown limit {limit!r}; expected one of {RATE_LIMITS}")
        self.rate_limited.labels(key_name, limit).inc()

    def rate_limit_failed_open(self, operation: str) -> None:
        """Rate limiting failed open for ``operation`` (one of :data:`RATE_LIMIT_OPERATIONS`)."""
        self.rate_limit_fail_open.labels(operation).inc()

    def breaker_changed(
        self, from_state: str, to_state: str, deployment: str | None = None
    ) -> None:
        """A breaker transition (pybreaker names: ``closed``, ``half-open``, ``open``);
        ``gateway_breaker_state`` shows the latest change of any deployment's breaker."""
        old, new = _breaker_state(from_state), _breaker_state(to_state)
        self.breaker_state.set(BREAKER_STATES[new])
        self.breaker_transitions.labels(old, new).inc()
        if deployment is not None:
            self.deployment_breaker_state.labels(deployment).set(BREAKER_STATES[new])

    def cache_event(self, event: str, count: int = 1) -> None:
        """A response-cache event, one of :data:`CACHE_EVENTS`."""
        self.cache_events.labels(event).inc(count)

    def set_cache_size(self, entries: int, size: int) -> None:
        self.cache_entries.set(entries)
        self.cache_bytes.set(size)

    def request_resumed(self, outcome: str) -> None:
        """A mid-stream failure: ``outcome`` is one of :data:`RESUME_OUTCOMES`."""
        self.resumed.labels(outcome).inc()

    def deployment_finished(
        self, model: str, deployment: str, outcome: str, duration_s: float | None
    ) -> None:
        self.deployment_requests.labels(model, deployment, outcome).inc()
        if duration_s is not None:
            self.deployment_duration.labels(deployment).observe(duration_s)

    def set_loop_stall(self, total_s: float) -> None:
        """The loop-stall monitor's running total (read on collect): counted as it grows."""
        if total_s > self._loop_stall_seen:
            self.loop_stall.inc(total_s - self._loop_stall_seen)
            self._loop_stall_seen = total_s

    def set_engine_up(self, up: bool) -> None:
        self.engine_up.set(1 if up else 0)

    def engine_restarted(self, deployment: str) -> None:
        self.engine_restarts.labels(deployment).inc()


def _breaker_state(name: str) -> str:
    state = name.lower().replace("_", "-")
    if state not in BREAKER_STATES:
        raise ValueError(f"unknown breaker state {name!r}")
    return state


def render_metrics(metrics: GatewayMetrics | None) -> bytes:
    """The text exposition of the gateway's registry: ``gateway_*``, the engines' ``vllm:*``
    (:class:`EngineMetrics`) and, on the default registry, the process collectors."""
    if metrics is None:
        return generate_latest(REGISTRY)
    metrics.refresh()
    return generate_latest(metrics.registry)
