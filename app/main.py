"""The app factory: ``uvicorn app.main:create_app --factory``. Nothing runs at import."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI

from app.api import admin, chat, completions, health, models, observability, simple
from app.api.body_limit import BodyLimitMiddleware
from app.api.error_handlers import install_error_handlers
from app.api.http import install_openapi
from app.auth.keys import KeyStore
from app.auth.ratelimit import RateLimiter
from app.auth.reload import KeyFileWatcher
from app.auth.storage_health import StorageErrors
from app.config import Settings, load_settings
from app.deps import require_admin
from app.engine.protocol import EngineClient
from app.lifecycle import Lifecycle
from app.observability.alerts import AlertEvaluator
from app.observability.health import HealthReporter, device_component, engine_component
from app.observability.metrics import GatewayMetrics
from app.observability.middleware import RequestContextMiddleware
from app.resilience.breaker import BreakerTransition, EngineBreaker
from app.resilience.queue import PriorityAdmission
from app.schemas.openai import ChatCompletionRequest, CompletionRequest, SimpleGenerateRequest
from app.services.lease import Guards
from app.services.pipeline import GenerationPipeline
from app.state import GatewayState

log = logging.getLogger(__name__)

VERSION = "0.1.0"
FatalHandler = Callable[[BaseException], None]
REQUEST_MODELS = (ChatCompletionRequest, CompletionRequest, SimpleGenerateRequest)


def create_app(
    settings: Settings | None = None,
    engine: EngineClient | None = None,
    on_fatal: FatalHandler | None = None,
) -> FastAPI:
    """Build the app. Without ``engine`` the app builds, starts and stops its own supervised
    engine; a given engine is the caller's to start and stop (tests share one).
    ``on_fatal`` is told when the engine cannot start, so the runner can exit non-zero.
    """
    settings = settings or load_settings()
    metrics = GatewayMetrics.for_registry()
    owned = engine is None
    engine = engine or build_engine(settings, metrics)
    state = build_state(settings, engine, metrics)
    docs = _docs_enabled(settings)
    app = FastAPI(
        title="LLM Gateway",
        version=VERSION,
        lifespan=_lifespan(state, engine if owned else None, on_fatal),
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
    )
    app.state.gateway = state
    _install_routes(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.server.max_body_bytes)
    app.add_middleware(
        RequestContextMiddleware,
        metrics=metrics,
        log_prompts=settings.observability.log_prompts,
        default_model=lambda: engine.model_info.served_name,
    )
    return app


def build_engine(settings: Settings, metrics: GatewayMetrics) -> EngineClient:
    """A supervised engine; wrapped in the fault-injection seam only when configured."""
    from app.engine.faults import FaultInjectingEngine
    from app.engine.manager import EngineManager
    from app.engine.supervisor import EngineSupervisor

    plan = settings.engine.fault_injection

    def factory() -> Any:
        manager = EngineManager(settings.engine)
        return FaultInjectingEngine(manager, plan) if plan is not None else manager

    return EngineSupervisor(
        factory, settings.resilience.engine_stall_s, on_restart=metrics.engine_restarted
    )


def build_state(settings: Settings, engine: EngineClient, metrics: GatewayMetrics) -> GatewayState:
    """Every part the routes and the lifespan use, wired once."""
    guards, storage_errors = _build_guards(settings, metrics)
    keys = KeyStore.from_settings(settings.auth, settings.resilience.default_priority)
    health = HealthReporter(version=VERSION, model=lambda: engine.model_info.served_name)
    health.add("engine", engine_component(engine))
    health.add("device", device_component)
    health.add("breaker", guards.breaker.health)
    health.add("queue", lambda: {"status": "ok", **guards.admission.stats().as_dict()})
    health.add("rate_limit_storage", storage_errors.report)
    metrics.on_collect(lambda: _refresh_gauges(metrics, engine, guards))
    return GatewayState(
        settings=settings,
        engine=engine,
        guards=guards,
        keys=keys,
        pipeline=GenerationPipeline(engine, settings, guards, keys),
        lifecycle=Lifecycle(guards.admission, settings.resilience.shutdown_grace_s),
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

    def on_transition(change: BreakerTransition) -> None:
        metrics.breaker_changed(change.previous, change.current)

    # The limiter logs storage errors itself, at most one warning per 10 s.
    limiter = RateLimiter.from_settings(settings.auth, on_storage_error=on_storage_error)
    storage_errors.backend = type(limiter.storage).__name__
    guards = Guards(
        limiter=limiter,
        admission=PriorityAdmission.from_settings(settings.resilience),
        breaker=EngineBreaker.from_settings(settings.resilience, listeners=[on_transition]),
        metrics=metrics,
    )
    return guards, storage_errors


def _refresh_gauges(metrics: GatewayMetrics, engine: EngineClient, guards: Guards) -> None:
    stats = guards.admission.stats()
    metrics.set_queue_depths(stats.depth_by_priority, capacity=guards.admission.max_queue)
    metrics.set_engine_up(engine.is_ready)


def _docs_enabled(settings: Settings) -> bool:
    """/docs, /redoc and /openapi.json: DOCS_ENABLED, or by default only without auth."""
    configured = settings.server.docs_enabled
    return configured if configured is not None else not settings.auth.enable_auth


def _install_routes(app: FastAPI) -> None:
    install_error_handlers(app)
    for module in (chat, completions, simple, models, health, admin):
        app.include_router(module.router)
    app.include_router(observability.router, dependencies=[Depends(require_admin)])
    install_openapi(app, REQUEST_MODELS)


def _lifespan(state: GatewayState, engine: EngineClient | None, on_fatal: FatalHandler | None):
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Load the model in the background so liveness answers during the start-up.
        tasks = [_task(state.alerts.run(), "alerts")]
        if engine is not None:
            startup_s = state.settings.engine.startup_timeout_s
            tasks.append(_task(_start(engine, startup_s, on_fatal), "engine-start"))
        auth = state.settings.auth
        if auth.api_keys_file is not None and auth.api_keys_reload_s > 0:
            watcher = KeyFileWatcher(state.keys, auth.api_keys_file, auth.api_keys_reload_s)
            tasks.append(_task(watcher.run(), "api-keys-reload"))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await state.guards.limiter.aclose()
            if engine is not None:
                await engine.stop()  # type: ignore[attr-defined]

    return lifespan


def _task(work: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
    return asyncio.create_task(work, name=name)


async def _start(engine: EngineClient, timeout_s: float, on_fatal: FatalHandler | None) -> None:
    """Start the engine within STARTUP_TIMEOUT_S; otherwise tell the runner (exit non-zero,
    so the orchestrator restarts the process)."""
    try:
        async with asyncio.timeout(timeout_s):
            await engine.start()  # type: ignore[attr-defined]
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        if isinstance(exc, TimeoutError):
            exc = TimeoutError(f"the engine was not ready within STARTUP_TIMEOUT_S={timeout_s:g}s")
        log.critical("engine failed to start: %s", exc, exc_info=exc)
        if on_fatal is not None:
            on_fatal(exc)
