"""``EngineSupervisor``: keeps an engine up — start-up retries, death and stall detection,
background restarts with exponential backoff.

It is an ``EngineClient`` that delegates to the engine it currently holds, built by a
factory (an :class:`EngineManager`, possibly wrapped by the fault-injection seam).

- Start-up: transient failures are retried a bounded number of times (tenacity); a
  permanent misconfiguration (missing files, invalid values) fails at once.
- Death: the engine reports itself errored (vLLM's ``EngineDeadError``, e.g. the engine-core
  process was killed). In-flight requests already failed fast inside vLLM.
- Stall: requests are running or waiting but no token came for ``ENGINE_STALL_S`` — vLLM's
  own health check misses this. In-flight requests are failed with 503 at once.
- Either way: not ready (503 + Retry-After for new requests), then a restart in the
  background with exponential backoff until it is up again. Restarts are counted.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Protocol

from tenacity import (
    AsyncRetrying,
    retry_if_not_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from app.engine.protocol import DeviceInfo, EngineStep, ModelInfo, SamplingOptions
from app.engine.tool_protocol import ToolCallParser
from app.errors import EngineUnavailableError
from app.resilience.watchdog import ProgressWatchdog

log = logging.getLogger(__name__)

PERMANENT_START_ERRORS: tuple[type[BaseException], ...] = (FileNotFoundError, ValueError)
RESTART_RETRY_AFTER_S = 10.0


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
    """Owns the current engine and replaces it when it dies or stalls."""

    def __init__(
        self,
        factory: Callable[[], Any],
        stall_after_s: float,
        *,
        start_attempts: int = 3,
        check_interval_s: float = 0.5,
        on_restart: Callable[[], None] | None = None,
    ) -> None:
        self._factory = factory
        self._engine: Any = factory()
        self._speaker: Any = self._engine  # the engine whose tokenizer is used
        self._watchdog = ProgressWatchdog(stall_after_s)
        self._start_attempts = start_attempts
        self._check_interval_s = check_interval_s
        self._on_restart = on_restart
        self._monitor: asyncio.Task[None] | None = None
        self._restarting = False
        self.restarts = 0
        self.last_failure: str | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Start (retrying transient failures), then watch the engine in the background."""
        await self._start_with_retries(self._start_attempts)
        self._monitor = asyncio.create_task(self._watch(), name="engine-supervisor")

    async def stop(self) -> None:
        if self._monitor is not None:
            self._monitor.cancel()
            await asyncio.gather(self._monitor, return_exceptions=True)
        await self._engine.stop()

    async def _start_with_retries(self, attempts: int | None) -> None:
        stop = stop_after_attempt(attempts) if attempts else None
        async for attempt in AsyncRetrying(
            stop=stop or (lambda _: False),
            wait=wait_exponential(multiplier=1, min=1, max=30),
            retry=retry_if_not_exception_type(PERMANENT_START_ERRORS),
            reraise=True,
            before_sleep=lambda state: log.warning(
                "engine start failed, retrying",
                extra={"attempt": state.attempt_number, "error": repr(state.outcome)},
            ),
        ):
            with attempt:
                await self._engine.start()
        self._speaker = self._engine

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._check_interval_s)
            reason = self._failure_reason()
            if reason is not None:
                await self.restart(reason)

    def _failure_reason(self) -> str | None:
        if self._engine.is_dead:
            return "engine dead"
        engine = self._engine
        self._watchdog.observe(engine.num_unfinished_requests(), engine.last_progress_at)
        if self._watchdog.stalled():
            return f"engine stalled: no token for {self._watchdog.silent_for():.0f}s while busy"
        return None

    async def restart(self, reason: str) -> None:
        """Fail in-flight work, replace the engine, retry with backoff until it is up."""
        self._restarting, self.last_failure = True, reason
        log.error("restarting engine", extra={"reason": reason})
        old = self._engine
        old.fail_all(reason)
        await old.stop()
        self._engine = self._factory()
        try:
            await self._start_with_retries(None)
        finally:
            self._restarting = False
            self._watchdog.reset()
        self.restarts += 1
        if self._on_restart is not None:
            self._on_restart()
        log.warning("engine restarted", extra={"restarts": self.restarts})

    # -- EngineClient ----------------------------------------------------------------------

    @property
    def is_ready(self) -> bool:
        return not self._restarting and bool(self._engine.is_ready)

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
            raise EngineUnavailableError(
                "The engine is restarting.", retry_after=RESTART_RETRY_AFTER_S
            )

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
