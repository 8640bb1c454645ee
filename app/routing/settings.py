"""Settings of the routing layer: where the model catalogue comes from."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_ENV = SettingsConfigDict(env_file=None, extra="ignore", case_sensitive=False)


class RoutingSettings(BaseSettings):
    model_config = _ENV

    models_file: Path | None = Field(
        default=None, description="The model catalogue (YAML); unset: one local model."
    )
    models_reload_s: float = Field(
        default=5.0, gt=0, description="How often MODELS_FILE is checked for changes."
    )

    @field_validator("models_file")
    @classmethod
    def _exists(cls, path: Path | None) -> Path | None:
        if path is not None and not path.is_file():
            raise ValueError("MODELS_FILE is not a file")
        return path
