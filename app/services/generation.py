"""The one place that knows the order of a generation: validate → engine → results.

Everything that must fail before the first byte is sent (unknown model, context overflow,
an engine that is not ready, a bad structured-output schema) fails in :meth:`prepare`,
:meth:`collect` or :meth:`open_stream`, so routers can still answer with a status code.
The admission queue, rate-limit charge and circuit breaker slot in here as they land.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from app.config import ServerSettings
from app.engine.protocol import EngineClient, EngineStep, SamplingOptions
from app.errors import ContextLengthExceededError, InvalidRequestError, ModelNotFoundError
from app.services.cancellation import DisconnectWaiter, run_until_disconnected
from app.services.formatting import ChoiceResult, ResponseHead

OptionsBuilder = Callable[[int], SamplingOptions]


@dataclass(slots=True)
class Job:
    """One prompt's engine request."""

    request_id: str
    prompt_ids: list[int]
    options: SamplingOptions
    priority: int = 0


@dataclass(slots=True)
class JobResult:
    prompt_tokens: int
    choices: list[ChoiceResult]


class GenerationService:
    """Turns validated requests into engine work; shared by every generation route."""

    def __init__(self, engine: EngineClient, settings: ServerSettings) -> None:
        self.engine = engine
        self.settings = settings

    def head(self, prefix: str, model: str) -> ResponseHead:
        return ResponseHead(f"{prefix}-{uuid.uuid4().hex}", int(time.time()), model)

    def check_model(self, model: str | None) -> str:
        """The served model's id; 404 for any other name (``None`` means the default)."""
        served = self.engine.model_info.served_name
        if model is not None and model != served:
            raise ModelNotFoundError(
                f"The model `{model}` does not exist or you do not have access to it.",
                param="model",
            )
        return served

    def check_n(self, n: int, prompts: int = 1) -> None:
        if n > self.settings.max_n:
            raise InvalidRequestError(
                f"n={n} is above this server's limit of {self.settings.max_n}.", param="n"
            )
        if prompts > self.settings.max_prompts_per_request:
            limit = self.settings.max_prompts_per_request
            raise InvalidRequestError(f"At most {limit} prompts per request.", param="prompt")

    def prepare(
        self,
        request_id: str,
        prompt_ids: list[int],
        requested_max_tokens: int | None,
        build_options: OptionsBuilder,
        param: str,
    ) -> Job:
        """Check the context budget and build the job; 400 naming the limits if it overflows."""
        max_tokens = self._max_tokens(len(prompt_ids), requested_max_tokens, param)
        return Job(request_id, prompt_ids, build_options(max_tokens))

    def _max_tokens(self, prompt_len: int, requested: int | None, param: str) -> int:
        limit = self.engine.model_info.max_model_len
        wanted = requested or self.settings.default_max_tokens or max(limit - prompt_len, 1)
        if prompt_len + wanted > limit:
            raise ContextLengthExceededError(
                f"This model's maximum context length is {limit} tokens. However, you requested "
                f"{prompt_len + wanted} tokens ({prompt_len} in the {param}, {wanted} in the "
                "completion). Please reduce the length of the "
                f"{param} or the completion.",
                param=param,
            )
        return wanted

    async def collect(self, jobs: list[Job], disconnected: DisconnectWaiter) -> list[JobResult]:
        """Run jobs to completion; a client disconnect aborts them all."""
        return await run_until_disconnected(self._collect_all(jobs), disconnected)

    async def _collect_all(self, jobs: list[Job]) -> list[JobResult]:
        import asyncio

        return list(await asyncio.gather(*(self._collect_one(job) for job in jobs)))

    async def _collect_one(self, job: Job) -> JobResult:
        choices = [ChoiceResult(index=i) for i in range(job.options.n)]
        async for step in self.engine.generate(
            job.prompt_ids, job.options, job.request_id, job.priority
        ):
            for delta in step.choices:
                choices[delta.index].add(delta)
        return JobResult(len(job.prompt_ids), choices)

    async def open_stream(self, job: Job) -> AsyncIterator[EngineStep]:
        """Start the engine request and wait for its first step, so early errors get a status."""
        stream = self.engine.generate(job.prompt_ids, job.options, job.request_id, job.priority)
        first = await anext(aiter(stream))
        return _prepend(first, stream)


async def _prepend(first: EngineStep, rest: AsyncIterator[EngineStep]) -> AsyncIterator[EngineStep]:
    try:
        yield first
        async for step in rest:
            yield step
    finally:
        await rest.aclose()  # type: ignore[attr-defined]
