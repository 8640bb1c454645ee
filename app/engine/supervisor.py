"""``EngineSupervisor``: keeps an engine up — start-up retries, death and stall detection,
background restarts with exponential backoff, an optional warm standby.

It is an ``EngineClient`` that delegates to the engine it currently holds, built by a
factory (an :class:`EngineManager`, possibly wrapped by the fault-injection seam). The
first engine is built in :meth:`start`, in a thread: building the first one imports vLLM
(~15 s on 2 cores), and the gateway answers liveness (and 503s) meanwhile.

- Start-up: transient failures are retried a bounded number of times (tenacity); a
  permanent misconfiguration (missing files, invalid values) fails at once.
- Death: the engine reports itself errored (vLLM's ``EngineDeadError``, e.g. the engine-core
  process was killed). In-flight requests already failed fast inside vLLM.
- Stall: requests are running or waiting but no token came for ``ENGINE_STALL_S`` — vLLM's
  own health check misses this. In-flight requests are failed with 503 at once.
- Either way the engine is replaced: by the standby at once when ``STANDBY_ENGINE`` keeps
  one ready (a new standby is then built in the background), else by a new engine, retried
  with backoff until it is up. Meanwhile new requests get 503 with ``Retry-After`` = the
  predicted time to ready (:class:`StartupForecast`). Restarts are counted.
- Stop: bounded whatever the state (starting, restarting, dead): background work is
  cancelled (a build in progress is shut down when it ends) and each engine's stop kills
  what has not exited within ``ENGINE_STOP_TIMEOUT_S``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Protocol

from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential

from app.engine.protocol import DeviceInfo, EngineStep, ModelInfo, SamplingOptions
from app.engine.threads import in_daemon_thread
from app.engine.tool_protocol import ToolCallParser
from app.errors import EngineUnavailableError
from app.resilience.forecast import StartupForecast
from app.resilience.watchdog import ProgressWatchdog

log = logging.getLogger(__name__)

PERMANENT_START_ERRORS: tuple[type[BaseException], ...] = (FileNotFoundError, ValueError)


def _transient(error: BaseException) -> bool:
    """Worth another start. Never a cancellation: tenacity catches ``BaseException`` in an
    attempt, and retrying a cancelled start made a stop (SIGTERM) mid-restart wait forever."""
    return isinstance(error, Exception) and not isinstance(error, PERMANENT_START_ERRORS)


class SupervisedEngine(Protocol):
    """What the supervisor needs beyond ``EngineClient``: lifecycle and death signals."""

    is_ready: bool
    is_dead: bool
    model_info: ModelInfo
    device_info: DeviceInfo
    last_progress_at: float

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    def fail_all(self, reason: str) -> None: ...
    def num_unfinished_requests(self) -> int: ...
    def generate(self, *args: Any, **kwargs: Any) -> AsyncIterator[EngineStep]: ...


class EngineSupervisor:
    """Owns the current engine (and a standby, if asked) and replaces it when it fails."""

    def __init__(
        self,
        factory: Callable[[], Any],
        stall_after_s: float,
        *,
        standby: bool = False,
        start_attempts: int = 3,
        check_interval_s: float = 0.5,
        on_restart: Callable[[], None] | None = None,
        forecast: StartupForecast | None = None,
    ) -> None:
        self._factory = factory
        self._engine: Any = _NotBuilt()
        self._speaker: Any = self._engine  # the engine whose tokenizer is used
        self._watchdog = ProgressWatchdog(stall_after_s)
        self._start_attempts = start_attempts
        self._check_interval_s = check_interval_s
        self._on_restart = on_restart
        self._want_standby = standby
        self._standby: asyncio.Task[Any] | None = None  # builds, then holds, the spare
        self._monitor: asyncio.Task[None] | None = None
        self._retiring: set[asyncio.Task[None]] = set()
        self._restarting = False
        # When the start of the engine that is to be active, and of the standby, began
        # (their latest attempt); None once it is up.
        self._active_began: float | None = None
        self._standby_began: float | None = None
        self.forecast = forecast or StartupForecast()
        self._first_started = False  # later starts are restarts (or standbys): forecast apart
        self.restarts = 0
        self.last_failure: str | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Start (retrying transient failures), then watch the engine in the background."""
        self._active_began = time.monotonic()
        self._engine = await in_daemon_thread(self._factory, "engine-import")
        await self._start_with_retries(self._engine, self._start_attempts, "active")
        self._up()
        self._monitor = asyncio.create_task(self._watch(), name="engine-supervisor")
        self._refill_standby()

    async def stop(self) -> None:
        """Cancel the watch, a restart and a standby build; stop every engine (bounded)."""
        tasks = [t for t in (self._monitor, self._standby) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        spare = self._ready_standby()
        self._standby = None
        engines = [self._engine] + ([spare] if spare is not None else [])
        await asyncio.gather(*(engine.stop() for engine in engines), return_exceptions=True)
        await asyncio.gather(*self._retiring, return_exceptions=True)

    async def _start_with_retries(self, engine: Any, attempts: int | None, role: str) -> None:
        """Start ``engine`` (the ``active`` one or the ``standby``); each successful start's
        duration feeds the forecast."""
        stop = stop_after_attempt(attempts) if attempts else None
        async for attempt in AsyncRetrying(
            stop=stop or (lambda _: False),
            wait=wait_exponential(multiplier=1, min=1, max=30),
            retry=retry_if_exception(_transient),
            reraise=True,
            before_sleep=lambda state: log.warning(
                "engine start failed, retrying",
                extra={"attempt": state.attempt_number, "error": repr(state.outcome)},
            ),
        ):
            with attempt:
                began = time.monotonic()
                setattr(self, f"_{role}_began", began)
                await engine.start()
                self.forecast.record(
                    time.monotonic() - began,
                    restart=self._first_started,
                    repeatable_s=getattr(engine, "build_s", None),
                )
        setattr(self, f"_{role}_began", None)
        self._first_started = True

    def _up(self) -> None:
        """The active engine is ready: its tokenizer speaks, its silence is measured anew."""
        self._active_began = None
        self._speaker = self._engine
        self._watchdog.reset()

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._check_interval_s)
            reason = self._failure_reason()
            if reason is not None:
                await self.restart(reason)
            self._check_standby()

    def _failure_reason(self) -> str | None:
        if self._engine.is_dead:
            return "engine dead"
        engine = self._engine
        self._watchdog.observe(engine.num_unfinished_requests(), engine.last_progress_at)
        if self._watchdog.stalled():
            return f"engine stalled: no token for {self._watchdog.silent_for():.0f}s while busy"
        return None

    async def restart(self, reason: str) -> None:
        """Fail in-flight work and replace the engine: with the standby when one is ready
        (at once), else with a new one, retried with backoff until it is up."""
        self._restarting, self.last_failure = True, reason
        log.error("restarting engine", extra={"reason": reason})
        old = self._engine
        old.fail_all(reason)
        self._retire(old)  # stops beside the new start: a dead core takes seconds to reap
        try:
            self._engine = await self._replacement()
        finally:
            self._restarting = False
        self._up()
        self.restarts += 1
        if self._on_restart is not None:
            self._on_restart()
        log.warning("engine restarted", extra={"restarts": self.restarts})
        self._refill_standby()

    async def _replacement(self) -> Any:
        """The standby (awaited if it is still being built), else a freshly started engine."""
        spare, self._standby = self._standby, None
        if spare is not None:
            self._active_began = self._standby_began  # None: it is ready already
            try:
                engine = await spare
                log.warning("swapped to the standby engine")
                return engine
            except Exception as exc:  # a failed spare: build another
                log.error("standby engine failed; starting a new one", extra={"error": repr(exc)})
        engine = self._factory()
        self._engine = engine  # is_ready stays False while it starts
        try:
            await self._start_with_retries(engine, None, "active")
        except BaseException:
            self._retire(engine)
            raise
        return engine

    # -- standby ---------------------------------------------------------------------------

    def _refill_standby(self) -> None:
        if self._want_standby and self._standby is None:
            self._standby = asyncio.create_task(self._build_standby(), name="engine-standby")

    async def _build_standby(self) -> Any:
        engine = self._factory()
        try:
            await self._start_with_retries(engine, None, "standby")
        except BaseException:
            self._retire(engine)
            raise
        log.info("standby engine ready")
        return engine

    def _ready_standby(self) -> Any | None:
        task = self._standby
        if task is None or not task.done() or task.cancelled() or task.exception():
            return None
        return task.result()

    def _check_standby(self) -> None:
        """A standby that died (or whose build failed) is replaced in the background."""
        task = self._standby
        if task is None or not task.done():
            return
        spare = self._ready_standby()
        if spare is not None and not spare.is_dead:
            return
        log.error("standby engine lost; building another")
        self._standby = None
        if spare is not None:
            self._retire(spare)
        self._refill_standby()

    @property
    def standby_ready(self) -> bool | None:
        """Whether the standby is ready to take over (None: no standby is kept)."""
        if not self._want_standby:
            return None
        spare = self._ready_standby()
        return spare is not None and bool(spare.is_ready)

    @property
    def stat_registry(self) -> Any:
        """The active engine's ``vllm:*`` metrics registry (None while it is down): a
        standby's idle metrics stay out of the scrape until it takes over."""
        return getattr(self._engine, "stat_registry", None)

    @property
    def core_pids(self) -> list[int]:
        """The active engine's engine-core process ids (operators, tests)."""
        return list(getattr(self._engine, "core_pids", []))

    def _retire(self, engine: Any) -> None:
        task = asyncio.create_task(engine.stop(), name="engine-retire")
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    # -- EngineClient ----------------------------------------------------------------------

    @property
    def is_ready(self) -> bool:
        return not self._restarting and bool(self._engine.is_ready)

    @property
    def ready_in_s(self) -> float:
        """Predicted seconds until ready: 0 when ready, else at least 1 (see forecast)."""
        if self.is_ready:
            return 0.0
        now, began = time.monotonic(), self._active_began
        if began is None and self._standby is not None:  # dead; the standby takes over
            began = self._standby_began or 0.0  # 0.0: it is ready
        elapsed = 0.0 if began is None else now - began
        return self.forecast.remaining_s(elapsed, restart=self._first_started)

    def _unavailable(self) -> EngineUnavailableError:
        return EngineUnavailableError("The engine is restarting.", retry_after=self.ready_in_s)

    @property
    def model_info(self) -> ModelInfo:
        """The last started engine's: the model (its context, vocabulary) is known through a
        restart, so requests are still sized and routed while it comes back."""
        return self._speaker.model_info

    @property
    def device_info(self) -> DeviceInfo:
        return self._engine.device_info

    # The model's tokenizer is the last started engine's: it serves through a restart.

    @property
    def vocab_size(self) -> int:
        return int(self._speaker.vocab_size)

    def encode_prompt(self, text: str) -> list[int]:
        return self._speaker.encode_prompt(text)

    def encode_chat(
        self, messages: Sequence[dict[str, Any]], tools: list[dict[str, Any]] | None = None
    ) -> list[int]:
        return self._speaker.encode_chat(messages, tools)

    def tool_parser(self, name: str, tools: list[dict[str, Any]]) -> ToolCallParser:
        return self._speaker.tool_parser(name, tools)

    def decode(self, token_ids: list[int], skip_special_tokens: bool = True) -> str:
        return self._speaker.decode(token_ids, skip_special_tokens)

    def num_unfinished_requests(self) -> int:
        return self._engine.num_unfinished_requests()

    def _require_ready(self) -> None:
        """New work goes only to a ready engine; while it restarts the answer is a 503."""
        if not self.is_ready:
            raise self._unavailable()

    async def check_health(self) -> None:
        self._require_ready()
        await self._engine.check_health()

    async def abort(self, request_id: str) -> None:
        await self._engine.abort(request_id)

    @property
    def last_progress_at(self) -> float:
        return float(self._engine.last_progress_at)

    def generate(
        self,
        prompt_token_ids: list[int],
        options: SamplingOptions,
        request_id: str,
        priority: int = 0,
    ) -> AsyncIterator[EngineStep]:
        """The current engine's stream (no wrapper on the per-token path): stall detection
        reads the engine's own heartbeat."""
        self._require_ready()
        stream: AsyncIterator[EngineStep] = self._engine.generate(
            prompt_token_ids, options, request_id, priority
        )
        return stream

    async def embed(
        self,
        prompt_token_ids: list[int],
        request_id: str,
        dimensions: int | None = None,
        priority: int = 0,
    ) -> list[float]:
        self._require_ready()
        vector: list[float] = await self._engine.embed(
            prompt_token_ids, request_id, dimensions, priority
        )
        return vector


class _NotBuilt:
    """The engine before :meth:`EngineSupervisor.start` has built it: not ready, idle."""

    is_ready = False
    is_dead = False
    last_progress_at = 0.0

    @property
    def model_info(self) -> ModelInfo:
        raise EngineUnavailableError("The model is still loading.", retry_after=5)

    @property
    def device_info(self) -> DeviceInfo:
        from app.engine.device import detect_device

        return detect_device()

    def __getattr__(self, name: str) -> Any:
        if name in ("vocab_size", "encode_prompt", "encode_chat", "tool_parser", "decode", "embed"):
            raise EngineUnavailableError("The model is still loading.", retry_after=5)
        raise AttributeError(name)

    def num_unfinished_requests(self) -> int:
        return 0

    core_pids: tuple[int, ...] = ()

    def fail_all(self, reason: str) -> None:
        return None

    async def abort(self, request_id: str) -> None:
        return None

    async def stop(self) -> None:
        return None
