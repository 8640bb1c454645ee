"""Observability settings: logging, metrics and the thresholds of the in-process alerts.

Flat env names, like every group in :mod:`app.config` (``LOG_LEVEL``, ``LOG_JSON``,
``LOG_ACCESS``, ``LOG_PROMPTS``, ``METRICS_ENABLED``, ``ALERT_*``). The ``ALERT_*`` defaults are the
thresholds written into ``alerts/gateway-rules.yml``; a test keeps the two in step, so change
both together.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


class ObservabilitySettings(BaseSettings):
    """Logs, metrics and alert thresholds (seconds, ratios in 0..1)."""

    model_config = SettingsConfigDict(env_file=None, extra="ignore", case_sensitive=False)

    log_level: LogLevel = "INFO"
    log_json: bool = Field(default=True, description="One JSON object per line, every logger.")
    log_access: bool = Field(
        default=False, description="Also log uvicorn's access lines (the request line has more)."
    )
    log_prompts: bool = Field(
        default=False, description="Add prompts and completions to the request log line."
    )
    metrics_enabled: bool = Field(default=True, description="Serve GET /metrics.")

    alert_eval_interval_s: float = Field(default=15.0, gt=0)
    alert_history_size: int = Field(default=200, ge=1)
    alert_error_ratio: float = Field(default=0.05, gt=0, le=1)
    alert_min_requests: int = Field(
        default=20, ge=1, description="Error/limit ratios need this many requests in 5 min."
    )
    alert_p95_latency_s: float = Field(default=30.0, gt=0)
    alert_p95_ttft_s: float = Field(default=2.5, gt=0)
    alert_queue_saturation: float = Field(default=0.9, gt=0, le=1)
    alert_shed_per_s: float = Field(default=0.1, gt=0)
    alert_rate_limited_ratio: float = Field(default=0.25, gt=0, le=1)
    alert_kv_cache_usage: float = Field(default=0.95, gt=0, le=1)
    alert_engine_restarts: int = Field(default=3, ge=1, description="Restarts in 30 min.")
    alert_loop_stall_ratio: float = Field(
        default=0.1, gt=0, le=1, description="Share of 5 min the event loop may stall."
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        # LOG_LEVEL=info is as common as INFO; accept both.
        return value.upper() if isinstance(value, str) else value
