"""Session fixtures: one real vLLM engine on the embedded model, shared by every test,
served through real uvicorn on loopback; clients are the OpenAI SDK and httpx."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from openai import OpenAI

from app.auth.settings import AuthSettings
from app.config import ServerSettings, Settings
from app.embeddings.settings import EmbeddingSettings
from app.engine.manager import EngineManager
from app.engine.settings import EngineSettings
from app.main import create_app
from app.observability.settings import ObservabilitySettings
from app.resilience.settings import ResilienceSettings
from tests.support.redis_server import RedisServer, redis_installed
from tests.support.requirements import missing
from tests.support.servers import LoopThread, RunningServer, start_server, stop_server

ENGINE_START_TIMEOUT_S = 900


def make_settings(
    auth: dict[str, Any] | None = None,
    resilience: dict[str, Any] | None = None,
    embedding: dict[str, Any] | None = None,
    **server: Any,
) -> Settings:
    """Settings independent of the caller's environment: embedded model, test limits.

    Rate limits are high unless a test asks otherwise: with auth off every test shares the
    anonymous key's buckets. No embedding model unless ``embedding`` says so (its engine
    is the ``embedding_engine`` fixture's, given to the app as ``local-embed``).
    """
    auth_values = {"rate_limit_rpm": 1_000_000, "rate_limit_tpm": 10**9}
    auth_values |= {"rate_limit_concurrency": None, **(auth or {})}
    return Settings(
        server=ServerSettings(**server),
        engine=EngineSettings(model_name=None, served_model_name=None, max_model_len=1024),
        auth=AuthSettings(**auth_values),
        resilience=ResilienceSettings(**(resilience or {})),
        observability=ObservabilitySettings(log_json=False),
        embedding=EmbeddingSettings(**({"embedding_model": "none"} | (embedding or {}))),
    )


@pytest.fixture(scope="session")
def loop_thread() -> Iterator[LoopThread]:
    loop = LoopThread()
    yield loop
    loop.close()


@pytest.fixture(scope="session")
def engine(loop_thread: LoopThread) -> Iterator[EngineManager]:
    manager = EngineManager(make_settings().engine)
    loop_thread.run(manager.start(), timeout=ENGINE_START_TIMEOUT_S)
    yield manager
    loop_thread.run(manager.stop(), timeout=60)


@pytest.fixture(scope="session")
def embedding_engine(loop_thread: LoopThread) -> Iterator[EngineManager]:
    """The embedded model's weights behind a pooling engine, as ``python dev.py run`` serves
    them for ``/v1/embeddings`` (started only by the tests that ask for it)."""
    settings = make_settings(embedding={"embedding_model": "embedded"})
    engine_settings = settings.engine.model_copy(
        update={"served_model_name": settings.embedding.served_name(None), "max_num_seqs": 8}
    )
    manager = EngineManager(engine_settings, runner="pooling")
    loop_thread.run(manager.start(), timeout=ENGINE_START_TIMEOUT_S)
    yield manager
    loop_thread.run(manager.stop(), timeout=60)


@pytest.fixture(scope="session")
def server(loop_thread: LoopThread, engine: EngineManager) -> Iterator[RunningServer]:
    running = start_server(loop_thread, create_app(make_settings(max_body_bytes=64 * 1024), engine))
    yield running
    stop_server(running)


@pytest.fixture(scope="session")
def model_id(engine: EngineManager) -> str:
    return engine.model_info.served_name


@pytest.fixture
def client(server: RunningServer) -> Iterator[OpenAI]:
    with OpenAI(base_url=server.base_url, api_key="test-key", max_retries=0, timeout=60) as sdk:
        yield sdk


@pytest.fixture
def http(server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as session:
        yield session


# -- real redis-server (auth unit tests and e2e replicas) --------------------------------------

REDIS_MISSING = (
    "redis-server not installed (apt-get install -y --no-install-recommends redis-server;"
    " `python dev.py test` does it)"
)


def _require_redis() -> None:
    """Skip where redis-server is missing, except in CI, where that is a set-up failure."""
    if not redis_installed():
        missing(REDIS_MISSING)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real redis-server shared by the session (tests use distinct keys or flush it)."""
    _require_redis()
    server = RedisServer.launch(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The shared server's URL, its data flushed so that each test starts from full buckets."""
    with redis.Redis.from_url(redis_server.url) as client:
        client.flushall()
    return redis_server.url


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test alone, which the test may stop and start."""
    _require_redis()
    server = RedisServer.launch(tmp_path)
    yield server
    server.stop()
