"""Fixtures for the end-to-end auth tests: API keys written to a real ``API_KEYS_FILE`` and
real ``redis-server`` processes (skipped, with the install line, where Redis is missing)."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.auth.keys import hash_key
from tests.support.redis_server import RedisServer, redis_installed

NOT_INSTALLED = (
    "redis-server not installed (apt-get install -y --no-install-recommends redis-server)"
)

KeyFileWriter = Callable[[dict[str, dict[str, Any]]], tuple[Path, dict[str, str]]]


@pytest.fixture(scope="session")
def write_key_file(tmp_path_factory: pytest.TempPathFactory) -> KeyFileWriter:
    """Write an ``API_KEYS_FILE`` holding one entry per name (its fields as given), with a
    fresh random secret each; return the file and the plain secrets by name."""

    def write(entries: dict[str, dict[str, Any]]) -> tuple[Path, dict[str, str]]:
        plain = {name: f"sk-e2e-{name}-{secrets.token_urlsafe(24)}" for name in entries}
        keys = [
            {"name": name, "sha256": hash_key(plain[name]), **fields}
            for name, fields in entries.items()
        ]
        path = tmp_path_factory.mktemp("keys") / "keys.yaml"
        path.write_text(yaml.safe_dump({"keys": keys}), encoding="utf-8")
        return path, plain

    return write


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real redis-server shared by the session (tests use distinct key names)."""
    if not redis_installed():
        pytest.skip(NOT_INSTALLED)
    server = RedisServer.launch(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test alone, which the test may stop and start."""
    if not redis_installed():
        pytest.skip(NOT_INSTALLED)
    server = RedisServer.launch(tmp_path)
    yield server
    server.stop()
