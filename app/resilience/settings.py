"""Settings of the resilience layer: admission queue, deadlines, breaker, supervision.

Flat env names (``CONCURRENCY_LIMIT``, ``MAX_QUEUE_SIZE``, ``BREAKER_FAIL_MAX``...) like the
other groups in :mod:`app.config`, which composes this group into the root ``Settings``.

Priorities follow vLLM's convention so that one number means one thing end to end:
**lower runs sooner**. Tiers go from :data:`HIGHEST_PRIORITY` (0) to :data:`LOWEST_PRIORITY`
(10); requests that name none get ``DEFAULT_PRIORITY`` (5), leaving room both ways.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

HIGHEST_PRIORITY = 0
LOWEST_PRIORITY = 10

_ENV = SettingsConfigDict(env_file=None, extra="ignore", case_sensitive=False)


class ResilienceSettings(BaseSettings):
    """Limits that keep the engine healthy under load and fail fast when it is not."""

    model_config = _ENV

    concurrency_limit: int = Field(default=20, ge=1, description="Requests running in the engine.")
    max_queue_size: int = Field(default=200, ge=0, description="Requests waiting for a slot.")
    queue_timeout_s: float = Field(default=30.0, gt=0, description="Longest wait for a slot.")
    # 0.5 levels/s: a priority-10 request outranks a fresh priority-0 one after 20 s of
    # waiting, inside the default queue timeout, so a high-priority flood cannot starve it.
    aging_rate: float = Field(default=0.5, ge=0, description="Priority levels gained per second.")
    load_shedding: bool = Field(
        default=True, description="Refuse at once requests whose estimated wait exceeds their time."
    )
    default_priority: int = Field(default=5, ge=HIGHEST_PRIORITY, le=LOWEST_PRIORITY)
    request_timeout_s: float = Field(default=300.0, gt=0, description="Cap on a whole request.")
    breaker_fail_max: int = Field(default=5, ge=1, description="Failures in a row that open it.")
    breaker_reset_timeout_s: float = Field(default=30.0, gt=0, description="Open → half-open.")
    engine_stall_s: float = Field(default=60.0, gt=0, description="No token while busy = stall.")
    shutdown_grace_s: float = Field(default=30.0, ge=0, description="Drain time at shutdown.")
    resume_attempts: int = Field(
        default=2, ge=0, description="Times one request may continue elsewhere mid-stream."
    )
