"""``EngineManager``: owns vLLM's in-process ``AsyncLLM`` — the one place that touches vLLM.

Contract:
- ``start()`` builds the engine (the embedded default model when ``MODEL_NAME`` is unset)
  without blocking the event loop, so liveness keeps answering during the ~20 s load.
- ``generate()`` is an async stream of :class:`EngineStep`. Closing or cancelling it aborts
  the engine request (vLLM frees the KV cache through ``GeneratorExit``/``CancelledError``),
  so abandoned requests cost no compute.
- vLLM's exceptions leave as :class:`GatewayError`: client mistakes as 400, a dead engine as
  503 ``engine_unavailable``, anything else as 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, Literal

from prometheus_client import CollectorRegistry
from vllm import AsyncEngineArgs
from vllm.config import StructuredOutputsConfig
from vllm.exceptions import VLLMClientError
from vllm.pooling_params import PoolingParams
from vllm.v1.engine.async_llm import AsyncLLM
from vllm.v1.engine.exceptions import EngineDeadError
from vllm.v1.metrics.loggers import StatLoggerBase

from app.engine.device import allow_amx_tiles, default_gpu_memory_utilization, detect_device
from app.engine.forking import use_start_method
from app.engine.protocol import DeviceInfo, EngineStep, ModelInfo, SamplingOptions
from app.engine.settings import EngineSettings
from app.engine.threads import in_daemon_thread
from app.engine.tokenizer import render_chat
from app.engine.tool_parsing import VllmToolParser, build_tool_parser, tool_parser_class
from app.engine.tuning import cpu_engine_env, kv_bytes_per_token, kv_cache_bytes
from app.engine.vllm_adapter import to_engine_step, to_sampling_params
from app.engine.vllm_metrics import stat_logger_on
from app.errors import (
    EngineUnavailableError,
    GatewayError,
    InvalidRequestError,
)

log = logging.getLogger(__name__)


Runner = Literal["generate", "pooling"]


# exec() clears the AMX permission (see allow_amx_tiles): a spawned core would die on its
# first bf16 request, so it is refused at start-up instead.
SPAWN_WITHOUT_AMX = (
    "ENGINE_START_METHOD=spawn cannot run bf16 on this CPU: vLLM uses AMX for bf16 here, and "
    "a spawned engine core may not (it dies with SIGILL); use fork (the default) or "
    "DTYPE=float32"
)


class EngineManager:
    """Builds, serves and shuts down one ``AsyncLLM``: a generation engine, or with
    ``runner="pooling"`` an embedding one (vLLM converts a causal LM to an embedder)."""

    def __init__(
        self, settings: EngineSettings, runner: Runner = "generate", gpu_reserved: float = 0.0
    ) -> None:
        self._settings = settings
        self.runner = runner
        self._gpu_reserved = gpu_reserved  # the GPU share of another engine in this process
        self._engine: AsyncLLM | None = None
        self._tokenizer: Any = None
        self._model_info: ModelInfo | None = None
        # Seconds the last build spent in the engine itself (process, weights, KV cache): what
        # a restart repeats, unlike the one-off model inspection of a first config.
        self.build_s: float | None = None
        # When the engine core last returned outputs, whoever was (or was not) reading them:
        # stall detection judges the engine, not one slow consumer.
        self.last_progress_at = time.monotonic()
        # vLLM's ``vllm:*`` metrics of the running engine (None until built, after stop).
        self.stat_registry: CollectorRegistry | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Build the engine in a worker thread; raises if the model cannot be loaded, or
        ``ValueError`` if ``TOOL_CALL_PARSER`` names no parser or one that does not fit it,
        or for :data:`SPAWN_WITHOUT_AMX`."""
        parser = self._settings.tool_call_parser if self.runner == "generate" else None
        if parser is not None:
            await asyncio.to_thread(tool_parser_class, parser)  # a typo fails before the load
        source = await asyncio.to_thread(self._resolve_model_source)
        started = time.perf_counter()
        # A daemon thread: a SIGTERM mid-build must not wait for it (the build is not
        # interruptible); an engine that comes after the caller left is shut down at once.
        registry = CollectorRegistry()
        engine = await in_daemon_thread(
            lambda: self._build(source, registry), "engine-build", on_abandoned=_shutdown_quietly
        )
        self._engine, self.stat_registry = engine, registry
        self._tokenizer = engine.get_tokenizer()
        self._model_info = _model_info(engine.model_config, self._served_name(source), source)
        if parser is not None:
            await self._check_tool_parser(parser)
        log.info(
            "engine ready",
            extra={
                "model": source,
                "startup_s": round(time.perf_counter() - started, 1),
                "engine_build_s": round(self.build_s or 0.0, 1),
            },
        )

    async def _check_tool_parser(self, name: str) -> None:
        try:
            self.tool_parser(name, [])
        except ValueError:
            await self.stop()
            raise

    def _build(self, source: str, registry: CollectorRegistry) -> AsyncLLM:
        """vLLM's config with the KV cache sized to the need, then the engine, its metrics
        on ``registry`` (blocking)."""
        args = self._engine_args(source)
        device = detect_device()
        world_size = args.tensor_parallel_size * args.pipeline_parallel_size
        # Read by vLLM's CPU platform while it builds the config (see tuning.py).
        os.environ.update(cpu_engine_env(device.kind, world_size, bool(args.enforce_eager)))
        config = args.create_engine_config()
        kv_bytes = kv_cache_bytes(
            explicit_gb=self._settings.kv_cache_gb,
            device_kind=device.kind,
            max_num_seqs=config.scheduler_config.max_num_seqs,
            max_model_len=config.model_config.max_model_len,
            bytes_per_token=kv_bytes_per_token(config.model_config, config.parallel_config),
        )
        if kv_bytes is not None:
            config.cache_config.kv_cache_memory_bytes = kv_bytes
        if device.kind == "cpu":
            amx = allow_amx_tiles()  # before the core is forked: it inherits the permission
            method = self._settings.engine_start_method
            if amx and method == "spawn" and str(config.model_config.dtype) == "torch.bfloat16":
                raise ValueError(SPAWN_WITHOUT_AMX)
            use_start_method(method)
        began = time.perf_counter()
        engine = AsyncLLM.from_vllm_config(
            config,
            stat_loggers=[self._progress_logger, stat_logger_on(registry)],
            enable_log_requests=False,
        )
        self.build_s = time.perf_counter() - began
        return engine

    def _progress_logger(self, vllm_config: Any, engine_index: int = 0) -> StatLoggerBase:
        return _ProgressLogger(self)

    def note_progress(self) -> None:
        """The engine core returned outputs (called by vLLM's stats hook, on the loop)."""
        self.last_progress_at = time.monotonic()

    async def stop(self, timeout_s: float | None = None) -> None:
        """Shut the engine core down, within ``timeout_s`` (default ``ENGINE_STOP_TIMEOUT_S``):
        past it, its processes are killed. Safe to call twice."""
        engine, self._engine = self._engine, None
        self.stat_registry = None
        if engine is None:
            return
        timeout_s = self._settings.engine_stop_timeout_s if timeout_s is None else timeout_s
        try:
            await asyncio.wait_for(
                in_daemon_thread(engine.shutdown, "engine-shutdown"), max(timeout_s, 0.01)
            )
        except TimeoutError:
            log.error("engine shutdown timed out; killing it", extra={"timeout_s": timeout_s})
        except Exception:
            log.exception("engine shutdown failed; killing it")
        kill_engine_processes(engine)

    def _resolve_model_source(self) -> str:
        if self._settings.model_name:
            return self._settings.model_name
        from app.engine.default_model import DEFAULT_MODEL_DIR, ensure_default_model

        return str(ensure_default_model(Path(DEFAULT_MODEL_DIR)))

    def _served_name(self, source: str) -> str:
        if self._settings.served_model_name:
            return self._settings.served_model_name
        return self._settings.served_name

    def _engine_args(self, source: str) -> AsyncEngineArgs:
        settings, device = self._settings, detect_device()
        utilization = settings.gpu_memory_utilization or (
            default_gpu_memory_utilization(device)
            - (self._gpu_reserved if device.kind == "cuda" else 0.0)
        )
        eager = (
            settings.enforce_eager if settings.enforce_eager is not None else device.kind == "cpu"
        )
        return AsyncEngineArgs(
            model=source,
            dtype=settings.dtype,
            max_model_len=settings.max_model_len,  # type: ignore[arg-type]  # None = model's
            gpu_memory_utilization=utilization,
            enforce_eager=eager,
            max_num_seqs=settings.max_num_seqs,
            tensor_parallel_size=settings.tensor_parallel_size,
            pipeline_parallel_size=settings.pipeline_parallel_size,
            distributed_executor_backend=settings.distributed_executor_backend,
            max_logprobs=settings.max_logprobs,
            seed=settings.seed,
            trust_remote_code=settings.trust_remote_code,
            # Lower runs sooner, in vLLM and in our admission queue alike.
            scheduling_policy="priority",
            # Compact JSON only: with free whitespace a weak model can fill max_tokens with
            # newlines inside the grammar. Engine-wide in vLLM; per-request flags are ignored.
            structured_outputs_config=StructuredOutputsConfig(
                backend="xgrammar", disable_any_whitespace=True
            ),
            runner=self.runner,
            hf_overrides=self._hf_overrides(source),
        )

    def _hf_overrides(self, source: str) -> dict[str, Any]:
        """The embedded model is a test model: served as an embedder it declares Matryoshka
        vectors, so ``dimensions`` runs end to end (a prefix, re-normalised, as vLLM does for
        any Matryoshka model). Real models declare what they support in their config."""
        from app.engine.default_model import DEFAULT_MODEL_DIR

        embedded = Path(source).resolve() == Path(DEFAULT_MODEL_DIR).resolve()
        return {"is_matryoshka": True} if self.runner == "pooling" and embedded else {}

    # -- state -----------------------------------------------------------------------------

    @property
    def is_ready(self) -> bool:
        return self._engine is not None and not self._engine.errored

    @property
    def is_dead(self) -> bool:
        """The engine was started and has since died (e.g. its core process was killed)."""
        return self._engine is not None and self._engine.errored

    def fail_all(self, reason: str) -> None:
        """Fail every in-flight request at once (they see 503), as vLLM does on death."""
        if self._engine is not None:
            log.error("failing in-flight requests", extra={"reason": reason})
            self._engine.output_processor.propagate_error(EngineDeadError())

    @property
    def model_info(self) -> ModelInfo:
        if self._model_info is None:
            raise EngineUnavailableError("The model is still loading.", retry_after=5)
        return self._model_info

    @property
    def device_info(self) -> DeviceInfo:
        return detect_device()

    def num_unfinished_requests(self) -> int:
        return self._engine.get_num_unfinished_requests() if self._engine else 0

    @property
    def core_pids(self) -> list[int]:
        """The engine-core process ids (none before start or after stop)."""
        engine = self._engine
        return [p.pid for p in engine_processes(engine) if p.pid] if engine else []

    async def check_health(self) -> None:
        try:
            await self._require_engine().check_health()
        except EngineDeadError as exc:
            raise EngineUnavailableError("The engine has stopped.", retry_after=5) from exc

    # -- prompts ---------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return self.model_info.vocab_size

    def encode_prompt(self, text: str) -> list[int]:
        """Token ids for a completion prompt, with the model's BOS as vLLM's server adds it."""
        return list(self._require_tokenizer().encode(text))

    def encode_chat(
        self, messages: Sequence[dict[str, Any]], tools: list[dict[str, Any]] | None = None
    ) -> list[int]:
        """The chat template applied (ending in the assistant's turn), as token ids; the
        template renders ``tools`` (OpenAI's ``{"type": "function", "function": ...}``)."""
        return render_chat(self._require_tokenizer(), messages, tools)

    def decode(self, token_ids: list[int], skip_special_tokens: bool = True) -> str:
        """Text of ``token_ids`` as vLLM spells output (special tokens skipped by default)."""
        tokenizer = self._require_tokenizer()
        return str(tokenizer.decode(token_ids, skip_special_tokens=skip_special_tokens))

    def tool_parser(self, name: str, tools: list[dict[str, Any]]) -> VllmToolParser:
        return build_tool_parser(name, self._require_tokenizer(), tools)

    # -- generation ------------------------------------------------------------------------

    async def generate(
        self,
        prompt_token_ids: list[int],
        options: SamplingOptions,
        request_id: str,
        priority: int = 0,
    ) -> AsyncIterator[EngineStep]:
        """Stream engine steps; closing the stream aborts the request in the engine."""
        engine = self._require_engine()
        top_logprobs = options.logprobs or 0
        stream = None
        try:
            # Inside the try: vLLM validates params here too, and that is a client's 400.
            params = to_sampling_params(options)
            stream = engine.generate(
                {"prompt_token_ids": prompt_token_ids}, params, request_id, priority=priority
            )
            async for output in stream:
                yield to_engine_step(output, top_logprobs)
        except EngineDeadError as exc:
            raise EngineUnavailableError("The engine has stopped.", retry_after=5) from exc
        except (VLLMClientError, ValueError, OverflowError) as exc:
            await self._forget(request_id)
            raise InvalidRequestError(str(exc)) from exc
        except GatewayError:
            raise
        except Exception as exc:
            await self._forget(request_id)
            raise GatewayError(f"The engine failed: {type(exc).__name__}") from exc
        finally:
            if stream is not None:
                await stream.aclose()

    async def embed(
        self,
        prompt_token_ids: list[int],
        request_id: str,
        dimensions: int | None = None,
        priority: int = 0,
    ) -> list[float]:
        """One prompt's embedding (a pooling engine); cancelling aborts it in the engine."""
        engine = self._require_engine()
        final = None
        try:
            params = PoolingParams(task="embed", dimensions=dimensions)
            outputs = engine.encode(
                {"prompt_token_ids": prompt_token_ids}, params, request_id, priority=priority
            )
            async for output in outputs:
                final = output  # a pooling request answers once, when it finishes
        except EngineDeadError as exc:
            raise EngineUnavailableError("The engine has stopped.", retry_after=5) from exc
        except (VLLMClientError, ValueError, OverflowError) as exc:
            await self._forget(request_id)
            param = "dimensions" if "dimensions" in str(exc) else None
            raise InvalidRequestError(str(exc), param=param) from exc
        except GatewayError:
            raise
        except Exception as exc:
            await self._forget(request_id)
            raise GatewayError(f"The engine failed: {type(exc).__name__}") from exc
        if final is None:
            raise GatewayError("The engine returned no embedding.")
        return [float(x) for x in final.outputs.data.tolist()]

    async def _forget(self, request_id: str) -> None:
        """Abort a request that failed while being added: vLLM may still count it."""
        if self._engine is not None and not self._engine.errored:
            await self._engine.abort(request_id)

    async def abort(self, request_id: str) -> None:
        if self._engine is not None:
            await self._engine.abort(request_id)

    def _require_engine(self) -> AsyncLLM:
        if self._engine is None or self._engine.errored:
            raise EngineUnavailableError("The engine is not ready.", retry_after=5)
        return self._engine

    def _require_tokenizer(self) -> Any:
        """The model's tokenizer, loaded with the engine; it outlives the engine's death, so
        prompts are still counted (and resumed streams spelled) while it restarts."""
        if self._tokenizer is None:
            raise EngineUnavailableError("The model is still loading.", retry_after=5)
        return self._tokenizer


def _model_info(config: Any, served_name: str, source: str) -> ModelInfo:
    dimensions = config.matryoshka_dimensions if config.runner_type == "pooling" else None
    return ModelInfo(
        served_name=served_name,
        source=source,
        max_model_len=config.max_model_len,
        created=int(time.time()),
        vocab_size=config.get_vocab_size(),
        embedding_size=config.embedding_size if config.runner_type == "pooling" else 0,
        matryoshka=config.is_matryoshka,
        matryoshka_dimensions=tuple(dimensions) if dimensions else None,
    )


def engine_processes(engine: AsyncLLM) -> list[Any]:
    """The engine-core processes ``engine`` started (``multiprocessing`` processes)."""
    resources = getattr(getattr(engine, "engine_core", None), "resources", None)
    manager = getattr(resources, "engine_manager", None)
    return list(getattr(manager, "processes", None) or [])


def kill_engine_processes(engine: AsyncLLM) -> None:
    """SIGKILL whatever is left of ``engine``'s processes (after a shutdown, nothing)."""
    for process in engine_processes(engine):
        with contextlib.suppress(Exception):
            if process.is_alive():
                log.warning("killing engine-core process", extra={"pid": process.pid})
                process.kill()


def _shutdown_quietly(engine: AsyncLLM) -> None:
    """An engine whose caller left (cancelled mid-build): shut it down, or kill it."""
    try:
        engine.shutdown(timeout=5)
    except Exception:
        log.exception("abandoned engine failed to shut down")
    kill_engine_processes(engine)


class _ProgressLogger(StatLoggerBase):
    """vLLM's per-step stats hook, used only as a heartbeat: outputs came back."""

    def __init__(self, manager: EngineManager) -> None:
        self._manager = manager

    def record(
        self,
        scheduler_stats: Any,
        iteration_stats: Any,
        mm_cache_stats: Any = None,
        engine_idx: int = 0,
    ) -> None:
        if iteration_stats is not None:  # None when the engine returned no outputs
            self._manager.note_progress()

    def log_engine_initialized(self) -> None:
        return None
