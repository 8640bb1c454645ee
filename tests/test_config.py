"""Configuration: env names, validation, one clear line for a bad value."""

from __future__ import annotations

import pytest

from app.config import ConfigError, Settings, load_settings
from app.embeddings.settings import EmbeddingSettings
from app.routing.catalog import default_catalog


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


@pytest.mark.parametrize(
    ("env", "source", "served"),
    [
        ({}, "", "tiny-llama-embed"),  # python dev.py run: the embedded weights embed too
        ({"MODEL_NAME": "org/real-model"}, None, None),  # a real model brings no embedder
        ({"MODEL_NAME": "org/real-model", "EMBEDDING_MODEL": "org/e5"}, "org/e5", "org/e5"),
        ({"EMBEDDING_MODEL": "none"}, None, None),
        ({"MODEL_NAME": "org/real-model", "EMBEDDING_MODEL": "embedded"}, "", "tiny-llama-embed"),
        ({"EMBEDDING_MODEL": "org/e5", "EMBEDDING_SERVED_MODEL_NAME": "e5"}, "org/e5", "e5"),
    ],
)
def test_which_embedding_model_is_served(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], source: str | None, served: str | None
) -> None:
    for name in ("MODEL_NAME", "EMBEDDING_MODEL", "EMBEDDING_SERVED_MODEL_NAME"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = EmbeddingSettings()
    generation = env.get("MODEL_NAME")
    assert settings.source(generation) == source
    assert settings.served_name(generation) == served
    catalog = default_catalog("gen", settings.served_name(generation))
    assert [(m.id, m.task) for m in catalog.models][1:] == ([(served, "embed")] if served else [])
