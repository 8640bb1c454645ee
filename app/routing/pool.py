"""``DeploymentPool``: the live deployments, built from a catalogue and kept across reloads.

A reload builds a new :class:`Router` from the new catalogue: a deployment whose spec did
not change is the same object (its engine, connections, breaker and in-flight requests
carry on); a new one is built and started; one that left is retired — it takes no new
request, and stops once its last request is done, so a reload drops nothing in flight.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.config import Settings
from app.deployments.base import Deployment, DeploymentState
from app.deployments.local import LocalDeployment
from app.deployments.openai import OpenAIDeployment
from app.engine.protocol import EngineClient
from app.heap import freeze_startup_heap
from app.observability.metrics import GatewayMetrics
from app.resilience.breaker import BreakerTransition, EngineBreaker
from app.routing.catalog import (
    Catalog,
    CatalogError,
    DeploymentSpec,
    LocalDeploymentSpec,
    ModelSpec,
    OpenAIDeploymentSpec,
)
from app.routing.router import ModelRoute, Router, Tokenizer
from app.routing.strategies import Strategy

if TYPE_CHECKING:
    from app.engine.manager import Runner

log = logging.getLogger(__name__)
# The embedded model's directory, without importing the module that builds it (torch).
DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[2] / ".models" / "tiny-llama"


def _revision(source: str) -> str:
    """A local model directory's revision: when its weights last changed (a rebuild of the
    embedded model, a new snapshot staged at the same path); a hub id is its own."""
    path = Path(source).expanduser()
    stamps = [f.stat().st_mtime_ns for f in path.glob("*.safetensors")] if path.is_dir() else []
    return str(max(stamps, default=0))


class DeploymentPool:
    """Builds deployments (``given`` engines are the caller's: never started or stopped)."""

    def __init__(
        self,
        settings: Settings,
        metrics: GatewayMetrics,
        given: Mapping[str, EngineClient] | None = None,
    ) -> None:
        self.settings, self.metrics = settings, metrics
        self._given = dict(given or {})
        self._live: dict[str, tuple[str, DeploymentSpec, Deployment]] = {}
        self._tokenizers: dict[str, Tokenizer] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._local_embedders = False  # the catalogue being built runs an embedding engine

    def build(self, catalog: Catalog) -> tuple[Router, list[Deployment], list[Deployment]]:
        """The router for ``catalog``, the deployments it adds and those it retires."""
        live: dict[str, tuple[str, DeploymentSpec, Deployment]] = {}
        added: list[Deployment] = []
        self._local_embedders = any(m.task == "embed" and m.has_local for m in catalog.models)
        routes = {}
        for model in catalog.models:
            deployments = []
            for spec in model.deployments:
                kept = self._live.get(spec.name)
                if kept is not None and kept[:2] == (model.id, spec):
                    deployment = kept[2]
                else:
                    deployment = self._deployment(model, spec)
                    added.append(deployment)
                live[spec.name] = (model.id, spec, deployment)
                deployments.append(deployment)
            routes[model.id] = self._route(model, deployments, catalog)
        retired = [
            d for name, (_, _, d) in self._live.items() if live.get(name, (0, 0, None))[2] is not d
        ]
        self._live = live
        return Router(catalog, routes), added, retired

    def _route(
        self, model: ModelSpec, deployments: list[Deployment], catalog: Catalog
    ) -> ModelRoute:
        routing = catalog.routing
        names = [d.state.name for d in deployments]
        strategy = Strategy(routing.strategy, names, routing.max_load_factor)
        tokenizer = self._tokenizer(model, deployments)
        parser = self._tool_call_parser(model, tokenizer, local=model.has_local)
        return ModelRoute(model, deployments, tokenizer, strategy, int(time.time()), parser)

    def _tool_call_parser(self, model: ModelSpec, tokenizer: Tokenizer, local: bool) -> str | None:
        """The model's parser name, checked now: a typo, or a parser that does not fit the
        model's tokenizer, is a configuration error (a local engine checks its own at start,
        once its tokenizer is loaded)."""
        name = model.tool_call_parser or self.settings.engine.tool_call_parser
        if name is None:
            return None
        from app.engine.tool_parsing import tool_parser_class

        try:
            tool_parser_class(name)
            if not local:
                tokenizer.tool_parser(name, [])
        except ValueError as exc:
            raise CatalogError(f"models[{model.id}].tool_call_parser: {exc}") from None
        return name

    def _tokenizer(self, model: ModelSpec, deployments: list[Deployment]) -> Tokenizer:
        local = next((d for d in deployments if isinstance(d, LocalDeployment)), None)
        if local is not None:
            return local.engine
        source = str(model.tokenizer)
        if source not in self._tokenizers:
            from app.engine.tokenizer import HFTokenizer

            self._tokenizers[source] = HFTokenizer(source, self.settings.engine.trust_remote_code)
        return self._tokenizers[source]

    def _deployment(self, model: ModelSpec, spec: DeploymentSpec) -> Deployment:
        state = DeploymentState(
            spec.name, model.id, spec.kind, self._breaker(spec.name), spec.max_concurrency,
            weights=self._weights(model, spec),
        )  # fmt: skip
        if isinstance(spec, OpenAIDeploymentSpec):
            return OpenAIDeployment(state, spec)
        given = self._given.get(spec.name)
        if given is not None:
            return LocalDeployment(state, given, owned=False)
        return LocalDeployment(state, self._engine(model, spec), owned=True)

    def _weights(self, model: ModelSpec, spec: DeploymentSpec) -> str:
        """A deployment's weights identity (see DeploymentState.weights)."""
        if isinstance(spec, OpenAIDeploymentSpec):
            return f"openai:{spec.base_url}:{spec.model or ''}"
        source = self._model_source(model, spec) or str(DEFAULT_MODEL_DIR)
        return f"local:{source}:{_revision(source)}"

    def _model_source(self, model: ModelSpec, spec: LocalDeploymentSpec) -> str | None:
        """What a local deployment loads (None: the embedded model): its ``model``, else
        ``MODEL_NAME`` for a generation model, ``EMBEDDING_MODEL`` for an embedding one."""
        if spec.model:
            return spec.model
        if model.task == "embed":
            return self.settings.embedding.source(self.settings.engine.model_name) or None
        return self.settings.engine.model_name

    def _embedding_defaults(self) -> dict[str, Any]:
        embedding = self.settings.embedding
        defaults = {
            "max_num_seqs": embedding.embedding_max_num_seqs,
            "gpu_memory_utilization": embedding.embedding_gpu_memory_utilization,
            "max_model_len": embedding.embedding_max_model_len,
        }
        return {name: value for name, value in defaults.items() if value is not None}

    def _breaker(self, name: str) -> EngineBreaker:
        metrics = self.metrics

        def on_transition(change: BreakerTransition) -> None:
            metrics.breaker_changed(change.previous, change.current, deployment=name)

        return EngineBreaker.from_settings(
            self.settings.resilience, listeners=[on_transition], name=name
        )

    def _engine(self, model: ModelSpec, spec: LocalDeploymentSpec) -> EngineClient:
        """A supervised engine; wrapped in the fault-injection seam only when configured."""
        from app.engine.faults import FaultInjectingEngine
        from app.engine.supervisor import EngineSupervisor

        overrides: dict[str, Any] = {
            "served_model_name": model.id,
            "model_name": self._model_source(model, spec),
            "tool_call_parser": model.tool_call_parser or self.settings.engine.tool_call_parser,
            **(self._embedding_defaults() if model.task == "embed" else {}),
            **{
                field: value
                for field, value in spec.model_dump(
                    include={
                        "max_model_len", "dtype", "kv_cache_gb", "max_num_seqs",
                        "gpu_memory_utilization", "tensor_parallel_size",
                        "pipeline_parallel_size", "distributed_executor_backend",
                    }
                ).items()
                if value is not None
            },
        }  # fmt: skip
        engine_settings = self.settings.engine.model_copy(update=overrides)
        plan = engine_settings.fault_injection
        runner: Runner = "pooling" if model.task == "embed" else "generate"
        # A local embedding engine beside a generation engine takes its share of the GPU.
        shared = self.settings.embedding.embedding_gpu_memory_utilization
        reserved = shared if runner == "generate" and self._local_embedders else 0.0

        def factory() -> Any:
            # Imports vLLM (~15 s): the supervisor calls this off the loop, at start.
            from app.engine.manager import EngineManager

            manager = EngineManager(engine_settings, runner, gpu_reserved=reserved)
            return FaultInjectingEngine(manager, plan) if plan is not None else manager

        return EngineSupervisor(
            factory,
            self.settings.resilience.engine_stall_s,
            standby=engine_settings.standby_engine,
            on_restart=lambda: self.metrics.engine_restarted(spec.name),
        )

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, deployments: list[Deployment], on_fatal: Any = None) -> None:
        """Start ``deployments`` in the background (an engine loads for ~15 s)."""
        for deployment in deployments:
            self._spawn(self._start_one(deployment, on_fatal))

    async def _start_one(self, deployment: Deployment, on_fatal: Any) -> None:
        timeout = self.settings.engine.startup_timeout_s
        try:
            async with asyncio.timeout(timeout):
                await deployment.start()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if isinstance(exc, TimeoutError):
                exc = TimeoutError(
                    f"deployment {deployment.state.name} was not ready within "
                    f"STARTUP_TIMEOUT_S={timeout:g}s"
                )
            log.critical("deployment failed to start: %s", exc, exc_info=exc)
            if on_fatal is not None and isinstance(deployment, LocalDeployment):
                on_fatal(exc)
        else:
            freeze_startup_heap(after=f"deployment {deployment.state.name} started")

    def retire(self, deployments: list[Deployment]) -> None:
        """Stop ``deployments`` once their requests in flight are done."""
        for deployment in deployments:
            self._spawn(self._retire_one(deployment))

    async def _retire_one(self, deployment: Deployment) -> None:
        await deployment.state.drained()
        await deployment.stop()
        log.warning("deployment retired", extra={"deployment": deployment.state.name})

    def _spawn(self, work: Any) -> None:
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def stop(self) -> None:
        """Cancel background work and stop every live deployment."""
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        for _, _, deployment in self._live.values():
            await deployment.stop()
