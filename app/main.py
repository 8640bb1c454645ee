"""The app factory: ``uvicorn app.main:create_app --factory``. Nothing runs at import."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app.api import chat, completions, health, models, simple
from app.api.body_limit import BodyLimitMiddleware
from app.api.error_handlers import install_error_handlers
from app.config import Settings, load_settings
from app.engine.protocol import EngineClient
from app.services.generation import GenerationService

log = logging.getLogger(__name__)

FatalHandler = Callable[[BaseException], None]


def create_app(
    settings: Settings | None = None,
    engine: EngineClient | None = None,
    on_fatal: FatalHandler | None = None,
) -> FastAPI:
    """Build the app. Without ``engine`` the app builds, starts and stops its own
    :class:`EngineManager`; a given engine is the caller's to start and stop (tests share one).
    ``on_fatal`` is told when the engine cannot start, so the runner can exit non-zero.
    """
    settings = settings or load_settings()
    owned = engine is None
    if engine is None:
        from app.engine.manager import EngineManager

        engine = EngineManager(settings.engine)
    app = FastAPI(
        title="LLM Gateway",
        version="0.1.0",
        lifespan=_lifespan(engine if owned else None, on_fatal),
        debug=settings.server.debug,
    )
    app.state.settings = settings
    app.state.generation = GenerationService(engine, settings.server)
    install_error_handlers(app)
    for module in (chat, completions, simple, models, health):
        app.include_router(module.router)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.server.max_body_bytes)
    return app


def _lifespan(engine: EngineClient | None, on_fatal: FatalHandler | None):  # type: ignore[no-untyped-def]
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # Load the model in the background so liveness answers during the ~20 s start-up.
        task = asyncio.create_task(_start(engine, on_fatal)) if engine is not None else None
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                await engine.stop()  # type: ignore[union-attr]

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
