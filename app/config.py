"""Validated configuration, read from environment variables.

One root object, :class:`Settings`, groups the settings by area. Each group is its own
``BaseSettings`` so that the flat, documented env names (``MODEL_NAME``, ``PORT``,
``CONCURRENCY_LIMIT``...) stay valid without a nested delimiter. A bad value stops
start-up with one clear line (see :func:`load_settings`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.auth.settings import AuthSettings
from app.cache.settings import CacheSettings
from app.config_errors import ConfigError
from app.embeddings.settings import EmbeddingSettings
from app.engine.settings import EngineSettings
from app.observability.settings import ObservabilitySettings
from app.resilience.settings import ResilienceSettings
from app.routing.settings import RoutingSettings

_ENV = SettingsConfigDict(env_file=None, extra="ignore", case_sensitive=False)


class ServerSettings(BaseSettings):
    """HTTP server and request-shape limits."""

    model_config = _ENV

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    max_n: int = Field(default=16, ge=1, le=128)
    max_prompts_per_request: int = Field(default=32, ge=1)
    max_messages: int = Field(default=2048, ge=1, description="Messages per chat request.")
    # ~370 bytes an entry: a non-streamed answer keeps every token's alternatives until it
    # is sent (50k tokens x 20 would be 370 MB). Streams format them as they go.
    max_logprobs_entries: int = Field(default=100_000, ge=1)
    readiness: Literal["all", "any"] = Field(
        default="all",
        description="Ready while every model (all) or some model (any) has a live deployment.",
    )
    docs_enabled: bool | None = Field(
        default=None, description="/docs, /redoc, /openapi.json; unset: only when auth is off."
    )
    default_max_tokens: int | None = Field(
        default=None, ge=1, description="Used when a request sets no max_tokens; None = all room."
    )
    # Longer than the idle timeout of the clients and load balancers in front (60 s is
    # common), so the gateway never closes a pooled connection just as a request is sent on
    # it: uvicorn's 5 s default made the benchmark client fail with "Server disconnected".
    keep_alive_timeout_s: int = Field(default=75, ge=1)


class Settings(BaseSettings):
    """The root settings object; every group reads its own env vars.

    The groups of the resilience, auth and observability packages live beside the code they
    configure (those packages stay importable on their own) and are composed here.
    """

    model_config = _ENV

    server: ServerSettings = Field(default_factory=ServerSettings)
    engine: EngineSettings = Field(default_factory=EngineSettings)
    resilience: ResilienceSettings = Field(default_factory=ResilienceSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    observability: ObservabilitySettings = Field(default_factory=ObservabilitySettings)
    routing: RoutingSettings = Field(default_factory=RoutingSettings)
    cache: CacheSettings = Field(default_factory=CacheSettings)
    embedding: EmbeddingSettings = Field(default_factory=EmbeddingSettings)

    @model_validator(mode="after")
    def _model_path_exists_when_local(self) -> Settings:
        name = self.engine.model_name
        if name and _looks_like_path(name) and not Path(name).expanduser().exists():
            raise ValueError(f"MODEL_NAME={name!r} looks like a local path but does not exist")
        return self


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~")) or Path(name).exists()


def load_settings() -> Settings:
    """Read settings from the environment, turning validation errors into one clear line."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(_describe(err) for err in exc.errors())
        raise ConfigError(f"invalid configuration: {problems}") from None


_SECRET_HINTS = ("key", "secret", "password", "token", "storage")


def _describe(err: object) -> str:
    detail = dict(err)  # type: ignore[call-overload]
    where = ".".join(str(part) for part in detail.get("loc", ())) or "settings"
    value = detail.get("input")
    # Echo only plain values of non-secret fields: a model-level error's input is the whole
    # environment-derived dict, which may hold API keys or a Redis password.
    shown = isinstance(value, str | int | float) and not any(
        hint in where.lower() for hint in _SECRET_HINTS
    )
    return f"{where.upper()}: {detail.get('msg')}" + (f" (got {value!r})" if shown else "")
