"""The app factory: ``uvicorn app.main:create_app --factory``. Nothing runs at import."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI
from starlette.types import ASGIApp

from app.api import admin, chat, completions, embeddings, health, models, observability, simple
from app.api.body_limit import BodyLimitMiddleware
from app.api.error_handlers import install_error_handlers
from app.api.fast_lane import GatewayApp
from app.api.http import install_openapi
from app.auth.keys import KeyStore
from app.auth.ratelimit import RateLimiter
from app.auth.reload import KeyFileWatcher
from app.auth.storage_health import StorageErrors
from app.cache.service import ResponseCache
from app.config import Settings, load_settings
from app.deployments.local import LocalDeployment
from app.deps import require_admin
from app.engine.protocol import EngineClient
from app.lifecycle import Lifecycle
from app.observability.alerts import AlertEvaluator
from app.observability.health import HealthReporter, device_component
from app.observability.metrics import GatewayMetrics
from app.observability.middleware import RequestContextMiddleware
from app.resilience.loop_stall import LoopStallMonitor
from app.resilience.queue import PriorityAdmission
from app.routing.catalog import default_catalog
from app.routing.health import deployments_component
from app.routing.pool import DeploymentPool
from app.routing.registry import ModelRegistry, static_catalog
from app.schemas.embeddings import EmbeddingRequest
from app.schemas.openai import ChatCompletionRequest, CompletionRequest, SimpleGenerateRequest
from app.services.lease import Guards
from app.services.pipeline import GenerationPipeline
from app.state import GatewayState

log = logging.getLogger(__name__)

VERSION = "0.1.0"
FatalHandler = Callable[[BaseException], None]
REQUEST_MODELS = (
    ChatCompletionRequest, CompletionRequest, EmbeddingRequest, SimpleGenerateRequest,
)  # fmt: skip
DEFAULT_DEPLOYMENT = "local"
# An ASGI middleware and its options, as ``app.add_middleware`` takes them.
Middleware = list[tuple[Callable[..., ASGIApp], dict[str, Any]]]


def create_app(
    settings: Settings | None = None,
    engine: EngineClient | None = None,
    on_fatal: FatalHandler | None = None,
    local_engines: Mapping[str, EngineClient] | None = None,
) -> FastAPI:
    """Build the app. Deployments come from ``MODELS_FILE`` (or, without one, one local
    deployment of the engine settings); the app builds, starts and stops their engines,
    except those given: ``engine`` (the default local deployment's) or ``local_engines``
    (by deployment name) are the caller's to start and stop (tests share one).
    ``on_fatal`` is told when a local engine cannot start, so the runner can exit non-zero.
    """
    settings = settings or load_settings()
    metrics = GatewayMetrics.for_registry()
    given = dict(local_engines or {})
    if engine is not None:
        given.setdefault(DEFAULT_DEPLOYMENT, engine)
    state = build_state(settings, metrics, given)
    docs = _docs_enabled(settings)
    app = GatewayApp(
        title="LLM Gateway",
        version=VERSION,
        lifespan=_lifespan(state, on_fatal),
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
    )
    app.state.gateway = state
    _install_routes(app)
    outer: Middleware = [  # innermost first
        (BodyLimitMiddleware, {"max_bytes": settings.server.max_body_bytes}),
        (
            RequestContextMiddleware,
            {
                "metrics": metrics,
                "log_prompts": settings.observability.log_prompts,
                "default_model": lambda: state.registry.router.default.id,
            },
        ),
    ]
    for middleware, options in outer:
        app.add_middleware(middleware, **options)
    app.open_fast_lanes(lambda inner: _wrapped(inner, outer))
    return app


def _wrapped(inner: ASGIApp, middleware: Middleware) -> ASGIApp:
    for wrapper, options in middleware:
        inner = wrapper(inner, **options)
    return inner


def build_state(
    settings: Settings, metrics: GatewayMetrics, given: Mapping[str, EngineClient]
) -> GatewayState:
    """Every part the routes and the lifespan use, wired once."""
    guards, storage_errors = _build_guards(settings, metrics)
    keys = KeyStore.from_settings(settings.auth, settings.resilience.default_priority)
    pool = DeploymentPool(settings, metrics, given)
    embedding_id = settings.embedding.served_name(settings.engine.model_name)
    default = lambda: default_catalog(settings.engine.served_name, embedding_id)  # noqa: E731
    path = settings.routing.models_file
    registry = ModelRegistry(
        pool, static_catalog(path, default), path, settings.routing.models_reload_s
    )
    health = HealthReporter(
        version=VERSION, model=lambda: registry.router.default.id, critical=("deployments",)
    )
    health.add("deployments", lambda: deployments_component(registry))
    health.add("device", device_component)
    health.add("queue", lambda: {"status": "ok", **guards.admission.stats().as_dict()})
    health.add("rate_limit_storage", storage_errors.report)
    cache = ResponseCache.from_settings(settings.cache, metrics)
    if cache is not None:
        health.add("cache", cache.health)
    metrics.on_collect(lambda: _refresh_gauges(metrics, registry, guards))
    metrics.engines.watch(registry)
    return GatewayState(
        settings=settings,
        registry=registry,
        guards=guards,
        keys=keys,
        pipeline=GenerationPipeline(registry, settings, guards, keys, cache),
        lifecycle=Lifecycle(
            [guards.admission, guards.embedding_admission], settings.resilience.shutdown_grace_s
        ),
        alerts=AlertEvaluator.for_metrics(metrics, settings.observability),
        health=health,
        metrics=metrics,
    )


def _build_guards(settings: Settings, metrics: GatewayMetrics) -> tuple[Guards, StorageErrors]:
    storage_errors = StorageErrors(backend="memory")

    def on_storage_error(operation: str, error: Exception, failed_open: bool) -> None:
        storage_errors.note(operation, error)
        if failed_open:
            metrics.rate_limit_failed_open(operation)

    # The limiter logs storage errors itself, at most one warning per 10 s.
    limiter = RateLimiter.from_settings(settings.auth, on_storage_error=on_storage_error)
    storage_errors.backend = type(limiter.storage).__name__
    admission = PriorityAdmission.from_settings(settings.resilience)
    resilience, embedding = settings.resilience, settings.embedding
    embedding_admission = PriorityAdmission(
        embedding.embedding_concurrency_limit,
        embedding.embedding_max_queue_size,
        resilience.queue_timeout_s,
        aging_rate=resilience.aging_rate,
        shedding=resilience.load_shedding,
    )
    guards = Guards(limiter, admission, metrics, embedding_admission)
    return guards, storage_errors


def _refresh_gauges(metrics: GatewayMetrics, registry: ModelRegistry, guards: Guards) -> None:
    stats = guards.admission.stats()
    metrics.set_queue_depths(stats.depth_by_priority, capacity=guards.admission.max_queue)
    router = registry.router
    unavailable = set(router.unavailable_models())
    for route in router.routes.values():
        metrics.model_available.labels(route.id).set(0 if route.id in unavailable else 1)
    locals_ = [d for d in router.deployments() if isinstance(d, LocalDeployment)]
    metrics.set_engine_up(all(d.ready for d in locals_) and not unavailable)
    for deployment in router.deployments():
        state = deployment.state
        metrics.deployment_in_flight.labels(state.name).set(state.in_flight)
        up = deployment.ready and state.status() != "down"
        metrics.deployment_up.labels(state.model_id, state.name).set(1 if up else 0)


def _docs_enabled(settings: Settings) -> bool:
    """/docs, /redoc and /openapi.json: DOCS_ENABLED, or by default only without auth."""
    configured = settings.server.docs_enabled
    return configured if configured is not None else not settings.auth.enable_auth


def _install_routes(app: FastAPI) -> None:
    install_error_handlers(app)
    for module in (chat, completions, embeddings, simple, models, health, admin):
        app.include_router(module.router)
    app.include_router(observability.router, dependencies=[Depends(require_admin)])
    install_openapi(app, REQUEST_MODELS)


def _lifespan(state: GatewayState, on_fatal: FatalHandler | None):
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Deployments start in the background so liveness answers while engines load.
        registry = state.registry
        await registry.start(on_fatal)
        tasks = [_task(state.alerts.run(), "alerts"), _task(registry.run(), "model-registry")]
        auth = state.settings.auth
        if auth.api_keys_file is not None and auth.api_keys_reload_s > 0:
            watcher = KeyFileWatcher(state.keys, auth.api_keys_file, auth.api_keys_reload_s)
            tasks.append(_task(watcher.run(), "api-keys-reload"))
        hangup = _on_sighup(registry.request_reload)
        unwatch = _watch_loop_stalls(state.metrics)
        try:
            yield
        finally:
            hangup()
            unwatch()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await state.guards.limiter.aclose()
            if state.pipeline.cache is not None:
                await state.pipeline.cache.aclose()
            await registry.pool.stop()

    return lifespan


def _watch_loop_stalls(metrics: GatewayMetrics) -> Callable[[], None]:
    """``gateway_event_loop_stall_seconds_total`` from this loop's stall monitor (the one
    remote deployments consult), counted from now; returns what stops it."""
    stalls = LoopStallMonitor.acquire()
    since = stalls.stalled_s()
    unhook = metrics.on_collect(lambda: metrics.set_loop_stall(stalls.stalled_s() - since))

    def stop() -> None:
        unhook()
        stalls.release()

    return stop


def _task(work: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
    return asyncio.create_task(work, name=name)


def _on_sighup(reload: Callable[[], None]) -> Callable[[], None]:
    """SIGHUP re-reads MODELS_FILE; only where signals can be had (the main thread)."""
    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signal.SIGHUP, reload)
    except (RuntimeError, ValueError, NotImplementedError):  # not the main thread (tests)
        return lambda: None
    return lambda: _remove_sighup(loop)


def _remove_sighup(loop: asyncio.AbstractEventLoop) -> None:
    with contextlib.suppress(RuntimeError, ValueError):
        loop.remove_signal_handler(signal.SIGHUP)
