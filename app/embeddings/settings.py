"""Settings of embeddings (``EMBEDDING_*``): which model the default catalogue serves for
``/v1/embeddings``, and the bounds and admission of embedding requests.

``EMBEDDING_MODEL``: unset serves the embedded model's weights through a pooling engine
when ``MODEL_NAME`` is unset too (``python dev.py run`` serves both), and nothing when a
real generation model is configured without one; ``none`` serves no embedding model;
``embedded`` the embedded weights in any case; anything else is a hub id or local path.
With ``MODELS_FILE`` the catalogue says which models embed (``task: embed``); its local
embedding deployments load ``EMBEDDING_MODEL`` unless they name their ``model``.
"""

from __future__ import annotations

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_ENV = SettingsConfigDict(env_file=None, extra="ignore", case_sensitive=False)
EMBEDDED_SERVED_NAME = "tiny-llama-embed"
OFF, EMBEDDED = "none", "embedded"


class EmbeddingSettings(BaseSettings):
    model_config = _ENV

    embedding_model: str | None = Field(default=None, description="hub id, path, or none")
    embedding_served_model_name: str | None = None
    embedding_max_model_len: int | None = Field(default=None, ge=16)
    # Two engines on one GPU share its memory: the generation engine keeps 0.80 by default.
    embedding_gpu_memory_utilization: float = Field(default=0.10, gt=0, le=1)
    embedding_max_num_seqs: int = Field(default=32, ge=1, description="The engine's batch.")
    embedding_concurrency_limit: int = Field(default=8, ge=1, description="Requests at once.")
    embedding_max_queue_size: int = Field(default=200, ge=0)
    embedding_max_inputs: int = Field(default=2048, ge=1, description="Inputs per request.")
    embedding_max_total_tokens: int = Field(default=300_000, ge=1, description="Per request.")

    @field_validator("embedding_model", "embedding_served_model_name")
    @classmethod
    def _blank_is_unset(cls, value: str | None) -> str | None:
        return value.strip() or None if value is not None else None

    def source(self, generation_model: str | None) -> str | None:
        """The weights to embed with: a hub id or path, ``""`` for the embedded model's,
        None for no embedding model."""
        name = self.embedding_model
        if name is None:
            return "" if generation_model is None else None
        if name.lower() in (OFF, EMBEDDED):
            return None if name.lower() == OFF else ""
        return name

    def served_name(self, generation_model: str | None) -> str | None:
        source = self.source(generation_model)
        if source is None:
            return None
        return self.embedding_served_model_name or source or EMBEDDED_SERVED_NAME
