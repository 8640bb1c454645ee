"""Configuration: env names, validation, one clear line for a bad value."""

from __future__ import annotations

import pytest

from app.config import ConfigError, Settings, load_settings


def test_seed_env_names_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """The documented flat env names land in their groups."""
    monkeypatch.setenv("PORT", "9001")
    monkeypatch.setenv("GPU_MEMORY_UTILIZATION", "0.5")
    monkeypatch.setenv("SERVED_MODEL_NAME", "demo")
    settings = Settings()
    assert settings.server.port == 9001
    assert settings.engine.gpu_memory_utilization == 0.5
    assert settings.engine.served_model_name == "demo"


def test_bad_value_gives_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """An invalid value raises ConfigError naming the variable and the value."""
    monkeypatch.setenv("GPU_MEMORY_UTILIZATION", "1.5")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert "GPU_MEMORY_UTILIZATION" in message and "1.5" in message and "\n" not in message


def test_missing_local_model_path_fails_fast(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """A MODEL_NAME that is a path which does not exist is refused at start-up."""
    monkeypatch.setenv("MODEL_NAME", str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings()


def test_blank_model_name_means_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty MODEL_NAME selects the embedded model."""
    monkeypatch.setenv("MODEL_NAME", "  ")
    assert Settings().engine.model_name is None
