"""The app factory: ``uvicorn app.main:create_app --factory``. Nothing runs at import."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import Depends, FastAPI

from app.api import admin, chat, completions, health, models, observability, simple
from app.api.body_limit import BodyLimitMiddleware
from app.api.error_handlers import install_error_handlers
from app.auth.keys import KeyStore
from app.auth.ratelimit import RateLimiter
from app.config import Settings, load_settings
from app.deps import require_admin
from app.engine.protocol import EngineClient
from app.observability.alerts import AlertEvaluator
from app.observability.health import HealthReporter, device_component, engine_component
from app.observability.metrics import GatewayMetrics
from app.observability.middleware import RequestContextMiddleware
from app.resilience.breaker import BreakerTransition, EngineBreaker
from app.resilience.queue import PriorityAdmission
from app.services.generation import GenerationService
from app.services.lease import Guards

log = logging.getLogger(__name__)

VERSION = "0.1.0"
FatalHandler = Callable[[BaseException], None]


@dataclass
class StorageErrors:
    """The last rate-limit storage failure, for /health/detailed (degraded for a minute)."""

    window_s: float = 60.0
    last_at: float | None = None
    last_error: str | None = None

    def note(self, operation: str, error: Exception) -> None:
        self.last_at, self.last_error = time.monotonic(), f"{operation}: {error!r}"

    def report(self, backend: str) -> dict[str, Any]:
        recent = self.last_at is not None and time.monotonic() - self.last_at < self.window_s
        status = "degraded" if recent else "ok"
        return {"status": status, "backend": backend, "last_error": self.last_error}


@dataclass
class Lifecycle:
    """Shutdown state: once draining, readiness fails and admission refuses (503)."""

    guards: Guards
    grace_s: float
    draining: bool = False

    async def drain(self) -> bool:
        """Stop admitting and wait up to the grace period for in-flight requests."""
        self.draining = True
        log.warning("draining", extra={"grace_s": self.grace_s})
        return await self.guards.admission.drain(self.grace_s)


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
    storage_errors = StorageErrors()
    guards = _build_guards(settings, metrics, storage_errors)
    app = FastAPI(
        title="LLM Gateway",
        version=VERSION,
        lifespan=_lifespan(engine if owned else None, on_fatal),
        debug=settings.server.debug,
    )
    state = app.state
    state.settings, state.guards, state.metrics = settings, guards, metrics
    state.keys = KeyStore.from_settings(settings.auth)
    state.generation = GenerationService(engine, settings, guards)
    state.lifecycle = Lifecycle(guards, settings.resilience.shutdown_grace_s)
    state.alerts = AlertEvaluator.for_metrics(metrics, settings.observability)
    state.health = _health(engine, guards, storage_errors)
    metrics.on_collect(lambda: _refresh_gauges(metrics, engine, guards))
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


def _build_guards(
    settings: Settings, metrics: GatewayMetrics, storage_errors: StorageErrors
) -> Guards:
    def on_transition(change: BreakerTransition) -> None:
        metrics.breaker_changed(change.previous, change.current)

    return Guards(
        # The limiter logs storage errors itself, at most one warning per 10 s; the health
        # report reads the last one from its listener.
        limiter=RateLimiter.from_settings(settings.auth, on_storage_error=storage_errors.note),
        admission=PriorityAdmission.from_settings(settings.resilience),
        breaker=EngineBreaker.from_settings(settings.resilience, listeners=[on_transition]),
        metrics=metrics,
    )


def _refresh_gauges(metrics: GatewayMetrics, engine: EngineClient, guards: Guards) -> None:
    stats = guards.admission.stats()
    metrics.set_queue_depths(stats.depth_by_priority, capacity=guards.admission.max_queue)
    metrics.set_engine_up(engine.is_ready)


def _health(engine: EngineClient, guards: Guards, storage_errors: StorageErrors) -> HealthReporter:
    reporter = HealthReporter(version=VERSION, model=lambda: engine.model_info.served_name)
    reporter.add("engine", engine_component(engine))
    reporter.add("device", device_component)
    reporter.add("breaker", lambda: _breaker_health(guards.breaker))
    reporter.add("queue", lambda: {"status": "ok", **guards.admission.stats().as_dict()})
    storage = type(guards.limiter.storage).__name__
    reporter.add("rate_limit_storage", lambda: storage_errors.report(storage))
    return reporter


def _breaker_health(breaker: EngineBreaker) -> dict[str, Any]:
    stats = breaker.stats().as_dict()
    status = {"closed": "ok", "half-open": "degraded"}.get(breaker.state, "down")
    return {**stats, "status": status}


def _install_routes(app: FastAPI) -> None:
    install_error_handlers(app)
    for module in (chat, completions, simple, models, health, admin):
        app.include_router(module.router)
    app.include_router(observability.router, dependencies=[Depends(require_admin)])


def _lifespan(engine: EngineClient | None, on_fatal: FatalHandler | None):
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Load the model in the background so liveness answers during the ~20 s start-up.
        tasks = [asyncio.create_task(app.state.alerts.run(), name="alerts")]
        if engine is not None:
            tasks.append(asyncio.create_task(_start(engine, on_fatal), name="engine-start"))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await app.state.guards.limiter.aclose()
            if engine is not None:
                await engine.stop()  # type: ignore[attr-defined]

    return lifespan


async def _start(engine: EngineClient, on_fatal: FatalHandler | None) -> None:
    try:
        await engine.start()  # type: ignore[attr-defined]
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log.critical("engine failed to start: %s", exc, exc_info=exc)
        if on_fatal is not None:
            on_fatal(exc)
