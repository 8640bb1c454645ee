"""API keys: the key store, the bearer check, and the :class:`Principal` a request acts as.

Keys come from ``API_KEYS`` (plain, the simple case) or ``API_KEYS_FILE`` (YAML, hashed)::

    keys:
      - name: alice                # shown in logs, /auth/info and rate-limit state
        sha256: 9f86d081...        # hex SHA-256 of the key; the key itself is never stored
        rpm: 600                   # optional: RATE_LIMIT_RPM
        tpm: 200000                # optional: RATE_LIMIT_TPM
        burst: 20                  # optional: request bucket size (default: rpm)
        concurrency: 8             # optional: RATE_LIMIT_CONCURRENCY
        tier: premium              # premium | standard (default) | batch
        models: [tiny-llama]       # optional: the models this key may use (default: all)
        admin: false               # may call the admin routes

Only SHA-256 digests are kept in memory; a presented key is hashed and compared with
``hmac.compare_digest`` against *every* stored digest, with no early exit, so the time
taken tells nothing about which key, if any, matched.

Tiers map to priorities with vLLM's convention, **lower runs sooner**:
``premium=0``, ``standard=5``, ``batch=9`` (:data:`TIER_PRIORITY`).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from app.auth.buckets import Limits
from app.auth.settings import AuthSettings
from app.config_errors import ConfigError
from app.errors import AuthenticationError, ModelNotFoundError, PermissionDeniedError

log = logging.getLogger(__name__)

Tier = Literal["premium", "standard", "batch"]
TIER_PRIORITY: dict[str, int] = {"premium": 0, "standard": 5, "batch": 9}
ANONYMOUS = "anonymous"


class KeyFileError(ConfigError):
    """``API_KEYS_FILE`` cannot be read or is invalid; stops start-up with one line."""


def hash_key(key: str) -> str:
    """The hex SHA-256 of a plain key, as stored in ``API_KEYS_FILE``."""
    return hashlib.sha256(key.encode()).hexdigest()


class KeyEntry(BaseModel):
    """One entry of ``API_KEYS_FILE``; unknown fields are refused (a typo is not a default)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Names end up in logs, headers and Redis keys: keep them plain.
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")
    sha256: str = Field(pattern=r"^[0-9a-fA-F]{64}$")
    rpm: int | None = Field(default=None, ge=1)
    tpm: int | None = Field(default=None, ge=1)
    burst: int | None = Field(default=None, ge=1)
    concurrency: int | None = Field(default=None, ge=1)
    tier: Tier = "standard"
    models: list[str] | None = None
    admin: bool = False


class KeyFile(BaseModel):
    """The whole ``API_KEYS_FILE``: names and digests must be unique."""

    model_config = ConfigDict(extra="forbid")

    keys: list[KeyEntry] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _bare_keys_is_empty(cls, data: object) -> object:
        # A file holding just ``keys:`` (YAML null) is a valid, empty key file.
        if isinstance(data, dict) and data.get("keys") is None:
            return {**data, "keys": []}
        return data

    @model_validator(mode="after")
    def _unique(self) -> KeyFile:
        names = [entry.name for entry in self.keys]
        if len(set(names)) != len(names) or ANONYMOUS in names:
            raise ValueError(f"key names must be unique and not {ANONYMOUS!r}")
        digests = [entry.sha256.lower() for entry in self.keys]
        if len(set(digests)) != len(digests):
            raise ValueError("two entries hold the same sha256")
        return self


@dataclass(frozen=True)
class Principal:
    """Who a request acts as: a key's name, tier, limits and permissions. Holds no secret.

    ``name`` is also the identity rate limits are kept under (``"anonymous"`` when auth is
    off). ``models`` of ``None`` means every model.
    """

    name: str
    limits: Limits
    tier: Tier = "standard"
    models: frozenset[str] | None = None
    is_admin: bool = False
    auth_enabled: bool = True
    # Scheduling priority for the admission queue and vLLM, lower runs sooner; None: the
    # tier's (TIER_PRIORITY, whose "standard" the key store sets to DEFAULT_PRIORITY).
    priority: int = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.priority is None:
            object.__setattr__(self, "priority", TIER_PRIORITY[self.tier])

    def can_use(self, model: str) -> bool:
        """Whether this key may use ``model`` (e.g. to filter ``GET /v1/models``)."""
        return self.models is None or model in self.models

    def check_model(self, model: str) -> None:
        """Raise ``ModelNotFoundError`` (404 ``model_not_found``) unless this key may use
        ``model``: as OpenAI does, a model a key cannot see does not exist for it."""
        if not self.can_use(model):
            raise ModelNotFoundError(
                f"The model `{model}` does not exist or you do not have access to it.",
                param="model",
            )


@dataclass(frozen=True)
class KeyRecord:
    """A stored key: the principal it authenticates as and the digest of the key."""

    digest: bytes
    principal: Principal


def load_key_file(path: Path) -> KeyFile:
    """Parse ``API_KEYS_FILE``; raise :class:`KeyFileError` with one line if it is bad."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        return KeyFile.model_validate(raw)
    except OSError as exc:
        raise KeyFileError(f"API_KEYS_FILE={str(path)!r}: cannot read: {exc}") from None
    except yaml.YAMLError as exc:
        raise KeyFileError(
            f"API_KEYS_FILE={str(path)!r}: invalid YAML: {_yaml_problem(exc)}"
        ) from None
    except ValidationError as exc:
        problems = "; ".join(_describe(err) for err in exc.errors())
        raise KeyFileError(f"API_KEYS_FILE={str(path)!r}: {problems}") from None


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or " ".join(str(exc).split())
    return f"{problem} (line {mark.line + 1})" if mark is not None else problem


def _describe(err: object) -> str:
    detail = dict(err)  # type: ignore[call-overload]
    where = ".".join(str(part) for part in detail.get("loc", ())) or "file"
    return f"{where}: {detail.get('msg')}"


def tier_priorities(default_priority: int) -> dict[str, int]:
    """Each tier's priority: the standard tier (and the anonymous caller) run at
    ``DEFAULT_PRIORITY``; premium and batch keep theirs."""
    return {**TIER_PRIORITY, "standard": default_priority}


def record_from_entry(
    entry: KeyEntry, defaults: Limits, priorities: dict[str, int] = TIER_PRIORITY
) -> KeyRecord:
    """A stored key from a file entry; unset limits fall back to ``defaults``."""
    # A key that sets its own rpm but no burst gets rpm as its burst, not the global burst.
    burst = (
        entry.burst if entry.burst is not None else (defaults.burst if entry.rpm is None else None)
    )
    limits = Limits(
        rpm=entry.rpm or defaults.rpm,
        tpm=entry.tpm or defaults.tpm,
        burst=burst,
        concurrency=entry.concurrency if entry.concurrency is not None else defaults.concurrency,
    )
    models = frozenset(entry.models) if entry.models is not None else None
    principal = Principal(
        entry.name, limits, entry.tier, models, entry.admin, priority=priorities[entry.tier]
    )
    return KeyRecord(bytes.fromhex(entry.sha256), principal)


def record_from_plain_key(
    key: str, defaults: Limits, priorities: dict[str, int] = TIER_PRIORITY
) -> KeyRecord:
    """A stored key from ``API_KEYS``: standard tier, every model, not admin.

    Its name is ``key-`` and the first 8 hex digits of its digest: stable across restarts
    and reorderings, and useless for recovering a key with real entropy.
    """
    digest = hashlib.sha256(key.encode()).digest()
    principal = Principal(f"key-{digest.hex()[:8]}", defaults, priority=priorities["standard"])
    return KeyRecord(digest, principal)


class KeyStore:
    """Checks bearer keys and says who a request acts as.

    ``authenticate`` is for every model route; ``authenticate_admin`` for the admin routes
    (``/resilience/stats``, ``/alerts``). With auth off both return the anonymous principal,
    which carries only the limits the operator configured (``AuthSettings.anonymous_limits``).

    :meth:`reload` re-reads ``API_KEYS_FILE`` (see :mod:`app.auth.reload`): the new set
    replaces the old one whole, or, if the file is bad, the old one stays.
    """

    def __init__(
        self,
        records: Sequence[KeyRecord],
        *,
        enabled: bool,
        anonymous_limits: Limits,
        admin_routes_require_key: bool = True,
        anonymous_priority: int = TIER_PRIORITY["standard"],
        settings: AuthSettings | None = None,
        priorities: dict[str, int] = TIER_PRIORITY,
    ) -> None:
        self.enabled = enabled
        self.admin_routes_require_key = admin_routes_require_key
        self.anonymous = Principal(
            ANONYMOUS, anonymous_limits, auth_enabled=enabled, priority=anonymous_priority
        )
        self._settings = settings
        self._priorities = priorities
        self._records = self._checked(records)

    @classmethod
    def from_settings(cls, settings: AuthSettings, default_priority: int = 5) -> KeyStore:
        """Build from ``API_KEYS`` and ``API_KEYS_FILE``; raise :class:`KeyFileError` if the
        file is bad or a name appears in both."""
        priorities = tier_priorities(default_priority)
        return cls(
            _records(settings, priorities),
            enabled=settings.enable_auth,
            anonymous_limits=settings.anonymous_limits,
            admin_routes_require_key=settings.admin_routes_require_key,
            anonymous_priority=default_priority,
            settings=settings,
            priorities=priorities,
        )

    def reload(self) -> int:
        """Re-read the keys; the new set replaces the old at once. Returns how many keys
        there are; raises :class:`KeyFileError` (and keeps the old set) if the file is bad."""
        if self._settings is None:
            return len(self)
        records = self._checked(_records(self._settings, self._priorities))
        if self.enabled and not records:
            # An empty file is what a half-written one reads as: never lock everyone out.
            raise KeyFileError("API_KEYS_FILE holds no key (half written?); keeping the old keys")
        self._records = records
        return len(self)

    def _checked(self, records: Sequence[KeyRecord]) -> tuple[KeyRecord, ...]:
        records = tuple(records)
        names = {record.principal.name for record in records}
        digests = {record.digest for record in records}
        if len(names) != len(records) or len(digests) != len(records):
            raise KeyFileError("a key or key name appears twice across API_KEYS and the file")
        has_admin = any(record.principal.is_admin for record in records)
        if self.enabled and self.admin_routes_require_key and not has_admin:
            log.warning("no key has admin: true; the admin routes will answer 403")
        return records

    def __len__(self) -> int:
        return len(self._records)

    def authenticate(self, authorization: str | None) -> Principal:
        """The principal of ``Authorization: Bearer <key>``.

        Raises ``AuthenticationError`` (401, ``WWW-Authenticate: Bearer``) when auth is on
        and the header is missing, not a bearer token, or holds an unknown key.
        """
        if not self.enabled:
            return self.anonymous
        key = _bearer_token(authorization)
        if key is None:
            raise AuthenticationError(
                "Missing API key: send it as 'Authorization: Bearer <key>'.",
                code="missing_api_key",
            )
        principal = self._match(hashlib.sha256(key.encode()).digest())
        if principal is None:
            raise AuthenticationError("Incorrect API key provided.")
        return principal

    def _match(self, digest: bytes) -> Principal | None:
        found: Principal | None = None
        for record in self._records:
            # Never break out: every digest is compared on every call, whatever matched.
            if hmac.compare_digest(digest, record.digest) and found is None:
                found = record.principal
        return found

    def authenticate_admin(self, authorization: str | None) -> Principal:
        """The principal for an admin route.

        With auth on and ``ADMIN_ROUTES_REQUIRE_KEY``: 401 as :meth:`authenticate`, then
        ``PermissionDeniedError`` (403) unless the key has ``admin: true``. Without it, no
        key is needed (a key that is sent is still checked).
        """
        if not self.enabled:
            return self.anonymous
        if not self.admin_routes_require_key:
            return self.authenticate(authorization) if authorization else self.anonymous
        principal = self.authenticate(authorization)
        if not principal.is_admin:
            raise PermissionDeniedError(
                "This API key may not use admin routes.", code="admin_key_required"
            )
        return principal


def _records(settings: AuthSettings, priorities: dict[str, int]) -> list[KeyRecord]:
    defaults = settings.default_limits
    records = [record_from_plain_key(key, defaults, priorities) for key in settings.plain_keys()]
    if settings.api_keys_file is not None:
        entries = load_key_file(settings.api_keys_file).keys
        records += [record_from_entry(entry, defaults, priorities) for entry in entries]
    return records


def _bearer_token(authorization: str | None) -> str | None:
    """The token of a ``Bearer`` header (scheme case-insensitive, RFC 7235), or None."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token
