"""Settings of the response cache (``CACHE_*``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_ENV = SettingsConfigDict(env_file=None, extra="ignore", case_sensitive=False)


class CacheSettings(BaseSettings):
    model_config = _ENV

    # off, memory, or a Redis URL (it may hold a password: a secret, never logged).
    cache_backend: SecretStr = Field(default=SecretStr("off"))
    cache_max_bytes: int = Field(default=256 * 1024**2, ge=1024, description="memory: LRU bound")
    cache_ttl_s: float = Field(default=3600.0, gt=0)
    cache_scope: Literal["key", "global"] = "key"
    cache_hit_charge: Literal["requests", "tokens"] = Field(
        default="requests", description="A hit costs one request (requests) or its tokens too."
    )
    cache_redis_prefix: str = Field(default="gateway:cache", min_length=1)
    cache_redis_timeout_s: float = Field(default=0.5, gt=0, le=30)

    @field_validator("cache_backend")
    @classmethod
    def _known_backend(cls, value: SecretStr) -> SecretStr:
        backend = value.get_secret_value().strip()
        if backend not in ("off", "memory") and not backend.startswith(
            ("redis://", "rediss://", "unix://")
        ):
            raise ValueError("CACHE_BACKEND must be off, memory or a redis:// URL")
        return SecretStr(backend)

    @property
    def backend(self) -> str:
        return self.cache_backend.get_secret_value()

    @property
    def enabled(self) -> bool:
        return self.backend != "off"
