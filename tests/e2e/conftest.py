"""Fixtures for the end-to-end auth tests: API keys written to a real ``API_KEYS_FILE``.
The real ``redis-server`` fixtures live in ``tests/conftest.py``."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.auth.keys import hash_key

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
