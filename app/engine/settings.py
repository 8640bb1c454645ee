"""How vLLM's engine is built, read from flat env names (``MODEL_NAME``, ``KV_CACHE_GB``...).

Kept beside the engine it configures; :mod:`app.config` composes it into the root settings.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.engine.faults import FaultPlan

_ENV = SettingsConfigDict(env_file=None, extra="ignore", case_sensitive=False)
DEFAULT_SERVED_NAME = "tiny-llama"  # the embedded default model's id


class EngineSettings(BaseSettings):
    """How vLLM's engine is built. ``MODEL_NAME`` unset means the embedded default model."""

    model_config = _ENV

    model_name: str | None = Field(default=None, description="Hub id or local path.")
    served_model_name: str | None = Field(default=None, description="Id shown to clients.")
    max_model_len: int | None = Field(default=None, ge=16)
    # None: 0.90 on a GPU. On CPU it only caps what vLLM may take: the KV cache is sized
    # from MAX_NUM_SEQS x MAX_MODEL_LEN (or KV_CACHE_GB), see app/engine/sizing.py.
    gpu_memory_utilization: float | None = Field(default=None, gt=0.0, le=1.0)
    kv_cache_gb: float | None = Field(
        default=None, gt=0, description="KV cache size in GiB (vLLM's kv_cache_memory_bytes)."
    )
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    enforce_eager: bool | None = None
    max_num_seqs: int = Field(default=256, ge=1)
    # For models larger than one GPU (vLLM's scale-out settings).
    tensor_parallel_size: int = Field(default=1, ge=1)
    pipeline_parallel_size: int = Field(default=1, ge=1)
    distributed_executor_backend: Literal["mp", "ray", "uni"] | None = None
    seed: int = 0
    trust_remote_code: bool = False
    startup_timeout_s: float = Field(default=600.0, gt=0)
    # Past this, an engine that has not shut down is killed: shutdown is bounded whatever
    # state the engine is in.
    engine_stop_timeout_s: float = Field(default=10.0, gt=0)
    # How the engine-core process starts on CPU (see app/engine/forking.py).
    engine_start_method: Literal["fork", "spawn"] = "fork"
    # A second engine kept ready, swapped in at once when the active one dies or stalls.
    standby_engine: bool = False
    max_logprobs: int = Field(default=20, ge=0)
    tool_call_parser: str | None = Field(
        default=None,
        description="vLLM's parser of the model's tool calls for tool_choice auto "
        "(hermes, llama3_json, mistral...); unset: auto is answered as text.",
    )
    # Test-only: wrap the engine in the fault-injection seam (see app/engine/faults.py).
    fault_injection: FaultPlan | None = None
    allow_fault_injection: bool = False

    @model_validator(mode="after")
    def _fault_injection_needs_opt_in(self) -> EngineSettings:
        if self.fault_injection is not None and not self.allow_fault_injection:
            raise ValueError("FAULT_INJECTION is set but ALLOW_FAULT_INJECTION is not true")
        return self

    @property
    def served_name(self) -> str:
        """The id clients use: SERVED_MODEL_NAME, else MODEL_NAME, else the embedded model's."""
        return self.served_model_name or self.model_name or DEFAULT_SERVED_NAME

    @field_validator("model_name", "served_model_name", "tool_call_parser")
    @classmethod
    def _blank_is_unset(cls, value: str | None) -> str | None:
        return value.strip() or None if value is not None else None
