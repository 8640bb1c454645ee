"""Redis fixtures for the auth tests: one real ``redis-server`` for the session, emptied
before each test, and a private one per test for the outage tests that stop and restart it.
Skipped, with the install line, where ``redis-server`` is not installed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.support.redis_server import RedisServer, redis_installed

NOT_INSTALLED = (
    "redis-server not installed (apt-get install -y --no-install-recommends redis-server)"
)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real redis-server shared by the session."""
    if not redis_installed():
        pytest.skip(NOT_INSTALLED)
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
    if not redis_installed():
        pytest.skip(NOT_INSTALLED)
    server = RedisServer.launch(tmp_path)
    yield server
    server.stop()
