"""The model catalogue: which models the gateway serves, by which deployments, and how it
routes between them — ``MODELS_FILE`` (YAML) or the same document from a remote registry::

    models:
      - id: tiny-llama
        aliases: [default]
        deployments:
          - {name: local-a, kind: local}
          - {name: replica-b, kind: openai, base_url: http://vllm-b:8000/v1, api_key_env: B_KEY}
        fallbacks: [tiny-llama-long]
      - id: tiny-llama-long
        deployments: [{name: long, kind: openai, base_url: http://vllm-long:8000/v1}]
        context_length: 8192
        tokenizer: /models/tiny-llama
    routing: {strategy: least_outstanding}
    context_overflow: {tiny-llama: tiny-llama-long}
    registry: {url: http://registry/models, poll_s: 30, cache: .cache/registry.json}

Validated whole, once, before anything is served or swapped in: every mistake is one line
(``models[1].deployments[0].base_url: ...``), and a document that names an unknown
fallback, a deployment twice or no model at all is refused. Without ``MODELS_FILE`` the
catalogue is :func:`default_catalog`: today's one local deployment of the engine settings.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from app.config_errors import ConfigError

EMBED_DEPLOYMENT = "local-embed"  # the default catalogue's embedding engine
_NAME = r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$"  # ids end up in headers, labels and logs


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LocalDeploymentSpec(_Spec):
    """An in-process vLLM engine. Unset fields take the engine settings (``MODEL_NAME``...)."""

    name: str = Field(pattern=_NAME)
    kind: Literal["local"] = "local"
    model: str | None = None
    max_model_len: int | None = Field(default=None, ge=16)
    dtype: Literal["auto", "float32", "float16", "bfloat16"] | None = None
    kv_cache_gb: float | None = Field(default=None, gt=0)
    max_num_seqs: int | None = Field(default=None, ge=1)
    gpu_memory_utilization: float | None = Field(default=None, gt=0, le=1)
    tensor_parallel_size: int = Field(default=1, ge=1)
    pipeline_parallel_size: int = Field(default=1, ge=1)
    distributed_executor_backend: Literal["mp", "ray", "uni"] | None = None
    max_concurrency: int | None = Field(default=None, ge=1)


class HealthCheckSpec(_Spec):
    """Active checks of a remote deployment: ``GET <server root><path>`` must answer 2xx."""

    path: str = "/health"
    interval_s: float = Field(default=5.0, gt=0)
    timeout_s: float = Field(default=2.0, gt=0)
    failures: int = Field(default=2, ge=1, description="Failed checks in a row that eject it.")


class OpenAIDeploymentSpec(_Spec):
    """Any OpenAI-compatible server (vLLM's, another gateway, TGI, SGLang).

    ``send: tokens`` (default) sends the gateway's token ids to ``/v1/completions`` and asks
    for token ids back (vLLM's server and this gateway accept both); ``send: request`` sends
    the client's request as text, for servers that take no token ids. ``resume: tokens``
    declares that a stream cut on this deployment may continue here from token ids.
    """

    name: str = Field(pattern=_NAME)
    kind: Literal["openai"]
    base_url: str = Field(pattern=r"^https?://")
    model: str | None = Field(default=None, description="The upstream's model id (default: ours).")
    api_key_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    send: Literal["tokens", "request"] = "tokens"
    resume: Literal["tokens", "none"] = "none"
    priority: bool = Field(default=False, description="The upstream takes vLLM's `priority`.")
    timeout_s: float = Field(default=60.0, gt=0, description="Longest silence on a stream.")
    connect_timeout_s: float = Field(default=2.0, gt=0)
    max_connections: int = Field(default=256, ge=1)
    keepalive_s: float = Field(
        default=4.0,
        gt=0,
        description="Idle pooled connections are closed after this: below the upstream's "
        "keep-alive (uvicorn's, and so vLLM's server's, is 5 s), so none is reused as the "
        "upstream closes it.",
    )
    max_concurrency: int | None = Field(default=None, ge=1)
    health: HealthCheckSpec = Field(default_factory=HealthCheckSpec)

    @field_validator("base_url")
    @classmethod
    def _no_trailing_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @model_validator(mode="after")
    def _resume_needs_tokens(self) -> OpenAIDeploymentSpec:
        if self.resume == "tokens" and self.send != "tokens":
            raise ValueError("resume: tokens needs send: tokens")
        return self

    def api_key(self) -> str | None:
        return os.environ.get(self.api_key_env) if self.api_key_env else None


DeploymentSpec = Annotated[LocalDeploymentSpec | OpenAIDeploymentSpec, Field(discriminator="kind")]


class ModelSpec(_Spec):
    id: str = Field(pattern=_NAME)
    aliases: list[Annotated[str, Field(pattern=_NAME)]] = Field(default_factory=list)
    deployments: list[DeploymentSpec] = Field(min_length=1)
    fallbacks: list[str] = Field(default_factory=list)
    context_length: int | None = Field(default=None, ge=16)
    tokenizer: str | None = Field(default=None, description="Counts and renders prompts.")
    tool_call_parser: str | None = Field(
        default=None,
        description="vLLM's parser of this model's tool calls (default: TOOL_CALL_PARSER).",
    )
    task: Literal["generate", "embed"] = Field(
        default="generate",
        description="generate: chat and completions; embed: /v1/embeddings (a pooling engine).",
    )

    @property
    def has_local(self) -> bool:
        return any(isinstance(d, LocalDeploymentSpec) for d in self.deployments)

    @model_validator(mode="after")
    def _remote_only_needs_tokenizer_and_length(self) -> ModelSpec:
        if not self.has_local and (self.tokenizer is None or self.context_length is None):
            raise ValueError(
                "a model without a local deployment needs tokenizer (a path or hub id) and "
                "context_length, so the gateway can count, charge and route its tokens"
            )
        return self


class RoutingSpec(_Spec):
    strategy: Literal["least_outstanding", "round_robin", "prefix_affinity"] = "least_outstanding"
    prefix_tokens: int = Field(default=256, ge=1, description="prefix_affinity hashes these.")
    max_load_factor: float = Field(default=1.25, ge=1.0, description="Bounded-load spill.")
    max_attempts: int = Field(default=3, ge=1, description="Deployments tried per request.")


class RegistrySpec(_Spec):
    url: str = Field(pattern=r"^https?://")
    poll_s: float = Field(default=30.0, gt=0)
    timeout_s: float = Field(default=5.0, gt=0)
    cache: Path = Path(".cache/registry.json")


class Catalog(_Spec):
    """The whole validated document."""

    models: list[ModelSpec] = Field(min_length=1)
    routing: RoutingSpec = Field(default_factory=RoutingSpec)
    context_overflow: dict[str, str] = Field(default_factory=dict)
    registry: RegistrySpec | None = None

    @model_validator(mode="after")
    def _names_resolve(self) -> Catalog:
        names = [name for model in self.models for name in (model.id, *model.aliases)]
        _no_duplicates(names, "model id or alias")
        _no_duplicates([d.name for m in self.models for d in m.deployments], "deployment name")
        ids = {model.id for model in self.models}
        for model in self.models:
            _known(model.fallbacks, ids, f"{model.id}.fallbacks")
        _known(list(self.context_overflow), set(names), "context_overflow")
        _known(list(self.context_overflow.values()), ids, "context_overflow")
        self._same_task([(m.id, f) for m in self.models for f in m.fallbacks], "fallbacks")
        self._same_task(list(self.context_overflow.items()), "context_overflow")
        return self

    def _same_task(self, pairs: list[tuple[str, str]], where: str) -> None:
        """A request for one task must never be answered by a model of the other."""
        for name, target in pairs:
            source, other = self.model(name), self.model(target)
            if source is not None and other is not None and source.task != other.task:
                raise ValueError(
                    f"{where}: {name!r} ({source.task}) cannot go to {target!r} ({other.task})"
                )

    def model(self, name: str) -> ModelSpec | None:
        """The model named ``name`` (its id or an alias)."""
        for model in self.models:
            if name == model.id or name in model.aliases:
                return model
        return None


def _no_duplicates(names: list[str], what: str) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"the {what} {name!r} appears twice")
        seen.add(name)


def _known(names: list[str], known: set[str], where: str) -> None:
    for name in names:
        if name not in known:
            raise ValueError(f"{where} names {name!r}, which is not a model id")


class CatalogError(ConfigError):
    """A catalogue that cannot be used; one line per mistake."""


def parse_catalog(data: Any, source: str) -> Catalog:
    """Validate a parsed document; raise :class:`CatalogError` naming every mistake."""
    try:
        return Catalog.model_validate(data)
    except ValidationError as exc:
        lines = [_describe(err) for err in exc.errors()]
        raise CatalogError(f"{source}: " + "; ".join(lines)) from None


def load_catalog(path: Path) -> Catalog:
    """Read and validate ``MODELS_FILE``."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CatalogError(f"MODELS_FILE={str(path)!r}: cannot read: {exc}") from None
    except yaml.YAMLError as exc:
        first = " ".join(str(exc).split())
        raise CatalogError(f"MODELS_FILE={str(path)!r}: invalid YAML: {first}") from None
    return parse_catalog(data, f"MODELS_FILE={str(path)!r}")


def default_catalog(model_id: str, embedding_id: str | None = None) -> Catalog:
    """The gateway without ``MODELS_FILE``: the engine settings' model on a local deployment
    named ``local``, and the embedding model (``EMBEDDING_*``) on ``local-embed``."""
    models = [ModelSpec(id=model_id, deployments=[LocalDeploymentSpec(name="local")])]
    if embedding_id is not None:
        embed = LocalDeploymentSpec(name=EMBED_DEPLOYMENT)
        models.append(ModelSpec(id=embedding_id, deployments=[embed], task="embed"))
    return Catalog(models=models)


def _describe(err: Any) -> str:
    where = "".join(
        f"[{part}]" if isinstance(part, int) else f".{part}" for part in err.get("loc", ())
    ).lstrip(".")
    where = ".".join(p for p in where.split(".") if p not in ("local", "openai")) or "document"
    return f"{where}: {err.get('msg')}"
