"""Settings of API keys and rate limits, read from flat env names (``ENABLE_AUTH``...).

Refused at start-up, each with one clear line:

- ``ENABLE_AUTH=true`` without ``API_KEYS`` or ``API_KEYS_FILE`` (nobody could get in);
- keys configured while ``ENABLE_AUTH=false`` (the operator believes the service is
  protected, but every route would be open);
- duplicate keys in ``API_KEYS``, an ``API_KEYS_FILE`` that does not exist, a
  ``RATE_LIMIT_STORAGE`` that is neither ``memory`` nor a Redis URL.

``API_KEYS`` and ``RATE_LIMIT_STORAGE`` (a Redis URL may hold a password) are ``SecretStr``
so that they never show in logs or reprs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.auth.buckets import Limits

# "none" lets an env var unset an optional limit (RATE_LIMIT_CONCURRENCY=none: no cap).
_ENV = SettingsConfigDict(
    env_file=None, extra="ignore", case_sensitive=False, env_parse_none_str="none"
)
_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


class AuthSettings(BaseSettings):
    """API keys, per-key limits (the defaults for keys that set none) and limiter storage."""

    model_config = _ENV

    enable_auth: bool = False
    api_keys: SecretStr | None = Field(default=None, description="Comma-separated plain keys.")
    api_keys_file: Path | None = Field(
        default=None, validate_default=True, description="YAML file of hashed keys."
    )
    api_keys_reload_s: float = Field(
        default=10.0, ge=0, description="How often API_KEYS_FILE is checked for changes; 0: never."
    )
    admin_routes_require_key: bool = Field(
        default=True,
        description="With auth on: admin routes need a key with admin: true (false: no key).",
    )
    rate_limit_rpm: int = Field(default=60, ge=1)
    rate_limit_tpm: int = Field(default=100_000, ge=1)
    rate_limit_burst: int | None = Field(default=None, ge=1, description="none: = RPM.")
    rate_limit_concurrency: int | None = Field(default=16, ge=1, description="none: no cap.")
    rate_limit_storage: SecretStr = Field(
        default=SecretStr("memory"), description="'memory' or redis://, rediss://, unix://"
    )
    rate_limit_fail_mode: Literal["open", "closed"] = Field(default="open", validate_default=True)
    rate_limit_redis_timeout_s: float = Field(default=0.5, gt=0, le=30)
    rate_limit_redis_prefix: str = Field(default="gateway:ratelimit", min_length=1)
    rate_limit_unavailable_retry_after_s: float = Field(default=5.0, gt=0)

    @property
    def default_limits(self) -> Limits:
        """Limits of keys that set none of their own."""
        return Limits(
            rpm=self.rate_limit_rpm,
            tpm=self.rate_limit_tpm,
            burst=self.rate_limit_burst,
            concurrency=self.rate_limit_concurrency,
        )

    @property
    def anonymous_limits(self) -> Limits:
        """Limits of the one anonymous caller when auth is off: only those the operator set.

        Without keys every client is the same caller, so default per-key limits would make
        them share one small bucket; admission control still protects the engine.
        """
        configured = self.model_fields_set
        return Limits(
            rpm=self.rate_limit_rpm if "rate_limit_rpm" in configured else None,
            tpm=self.rate_limit_tpm if "rate_limit_tpm" in configured else None,
            burst=self.rate_limit_burst if "rate_limit_burst" in configured else None,
            concurrency=(
                self.rate_limit_concurrency if "rate_limit_concurrency" in configured else None
            ),
        )

    def plain_keys(self) -> list[str]:
        """The keys of ``API_KEYS``, stripped, blanks dropped."""
        return _split_keys(self.api_keys)

    @property
    def storage_url(self) -> str:
        return self.rate_limit_storage.get_secret_value().strip()

    # The checks below run as validators of non-secret fields, reading the secret ones from
    # ``info.data``: a validation error echoes its field's input, and it must never echo a
    # key or a Redis password.
    @field_validator("api_keys_file")
    @classmethod
    def _keys_are_consistent(cls, path: Path | None, info: ValidationInfo) -> Path | None:
        keys = _split_keys(info.data.get("api_keys"))
        enabled = bool(info.data.get("enable_auth"))
        if enabled and not keys and path is None:
            raise ValueError("ENABLE_AUTH=true needs API_KEYS or API_KEYS_FILE")
        if not enabled and (keys or path is not None):
            raise ValueError(
                "API_KEYS/API_KEYS_FILE are set but ENABLE_AUTH=false, so every route would be "
                "open; set ENABLE_AUTH=true or unset the keys"
            )
        if len(set(keys)) != len(keys):
            raise ValueError("API_KEYS holds the same key twice")
        if path is not None and not path.is_file():
            raise ValueError("API_KEYS_FILE is not a file")
        return path

    @field_validator("rate_limit_fail_mode")
    @classmethod
    def _storage_is_known(cls, mode: str, info: ValidationInfo) -> str:
        storage = info.data.get("rate_limit_storage")
        url = storage.get_secret_value().strip() if isinstance(storage, SecretStr) else "memory"
        if url != "memory" and not url.startswith(_REDIS_SCHEMES):
            scheme = url.split("://", 1)[0] if "://" in url else "?"
            raise ValueError(
                f"RATE_LIMIT_STORAGE must be 'memory' or a redis:// URL (got scheme {scheme!r})"
            )
        return mode


def _split_keys(value: SecretStr | None) -> list[str]:
    if value is None:
        return []
    return [key.strip() for key in value.get_secret_value().split(",") if key.strip()]
