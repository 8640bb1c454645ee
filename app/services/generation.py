"""The one place that knows the order of a generation:
validate → rate-limit charge → queue slot → breaker → engine (under a deadline) → results.

Everything that must fail before the first byte is sent (unknown model, context overflow,
an exhausted key, a full queue, an open breaker, a bad structured-output schema) fails in
:meth:`prepare`, :meth:`admit`, :meth:`collect` or :meth:`open_streams`, so routers can
still answer with a status code. A stream owns its :class:`RequestLease` and gives it back
when it ends, however it ends.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from app.auth.keys import Principal
from app.config import Settings
from app.engine.protocol import EngineClient, EngineStep, SamplingOptions
from app.errors import ContextLengthExceededError, InvalidRequestError, ModelNotFoundError
from app.resilience.deadline import Deadline
from app.resilience.settings import LOWEST_PRIORITY
from app.services.cancellation import DisconnectWaiter, run_until_disconnected
from app.services.formatting import ChoiceResult, ResponseHead
from app.services.lease import Guards, RequestLease, open_lease
from app.services.streams import merge_streams

OptionsBuilder = Callable[[int], SamplingOptions]

# Tokenizing blocks the event loop, and every open stream with it: ~5 ms for 16k characters,
# ~0.25 s for 1 MB on this project's CPU box. Prompts this long go to a worker thread;
# shorter ones stay on the loop, where a thread hand-off would cost more than it saves.
TOKENIZE_IN_THREAD_CHARS = 8_192


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is asking, and the priority they asked for in a header (may only lower it)."""

    principal: Principal
    header_priority: int | None = None


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

    def __init__(self, engine: EngineClient, settings: Settings, guards: Guards) -> None:
        self.engine = engine
        self.settings = settings
        self.guards = guards

    def head(self, prefix: str, model: str) -> ResponseHead:
        return ResponseHead(f"{prefix}-{uuid.uuid4().hex}", int(time.time()), model)

    def check_model(self, model: str | None, principal: Principal | None = None) -> str:
        """The served model's id; 404 for any other name or one the key may not use."""
        served = self.engine.model_info.served_name
        if model is not None and model != served:
            raise ModelNotFoundError(
                f"The model `{model}` does not exist or you do not have access to it.",
                param="model",
            )
        if principal is not None:
            principal.check_model(served)
        return served

    async def encode_prompt(self, text: str) -> list[int]:
        if len(text) < TOKENIZE_IN_THREAD_CHARS:
            return self.engine.encode_prompt(text)
        return await asyncio.to_thread(self.engine.encode_prompt, text)

    async def encode_chat(self, messages: Sequence[dict[str, str]]) -> list[int]:
        if sum(len(m.get("content") or "") for m in messages) < TOKENIZE_IN_THREAD_CHARS:
            return self.engine.encode_chat(messages)
        return await asyncio.to_thread(self.engine.encode_chat, messages)

    def check_n(self, n: int, prompts: int = 1) -> None:
        server = self.settings.server
        if n > server.max_n:
            raise InvalidRequestError(
                f"n={n} is above this server's limit of {server.max_n}.", param="n"
            )
        if prompts > server.max_prompts_per_request:
            limit = server.max_prompts_per_request
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
        default = self.settings.server.default_max_tokens
        wanted = requested or default or max(limit - prompt_len, 1)
        if prompt_len + wanted > limit:
            raise ContextLengthExceededError(
                f"This model's maximum context length is {limit} tokens. However, you requested "
                f"{prompt_len + wanted} tokens ({prompt_len} in the {param}, {wanted} in the "
                f"completion). Please reduce the length of the {param} or the completion.",
                param=param,
            )
        return wanted

    async def admit(
        self,
        caller: Caller,
        jobs: list[Job],
        model: str,
        body_priority: int | None = None,
        timeout_s: float | None = None,
    ) -> RequestLease:
        """Charge the key, queue for a slot, pass the breaker (429/503), start the deadline."""
        priority = self._priority(caller, body_priority)
        deadline = Deadline.for_request(timeout_s, self.settings.resilience.request_timeout_s)
        prompt_tokens = sum(len(job.prompt_ids) for job in jobs)
        cost = prompt_tokens + sum(job.options.n * (job.options.max_tokens or 0) for job in jobs)
        for job in jobs:
            job.priority = priority
        recorder = self.guards.metrics.recorder(model)
        return await open_lease(
            self.guards, caller.principal, priority, deadline, cost, prompt_tokens, recorder
        )

    def _priority(self, caller: Caller, body_priority: int | None) -> int:
        """The key's tier priority, lowered (never raised) by the body or X-Priority."""
        asked = [p for p in (body_priority, caller.header_priority) if p is not None]
        return min(max([caller.principal.priority, *asked]), LOWEST_PRIORITY)

    async def collect(
        self, jobs: list[Job], lease: RequestLease, disconnected: DisconnectWaiter
    ) -> list[JobResult]:
        """Run jobs to completion under the deadline; a client disconnect aborts them all."""
        error: BaseException | None = None
        try:
            async with lease.guard:
                work = self._collect_all(jobs, lease)
                return await run_until_disconnected(work, disconnected)
        except BaseException as exc:
            error = exc
            raise
        finally:
            await lease.close(error)

    async def _collect_all(self, jobs: list[Job], lease: RequestLease) -> list[JobResult]:
        return list(await asyncio.gather(*(self._collect_one(job, lease) for job in jobs)))

    async def _collect_one(self, job: Job, lease: RequestLease) -> JobResult:
        choices = [ChoiceResult(index=i) for i in range(job.options.n)]
        async for step in self._generate(job):
            lease.step(step.num_tokens)
            for delta in step.choices:
                choices[delta.index].add(delta)
        return JobResult(len(job.prompt_ids), choices)

    def _generate(self, job: Job) -> AsyncIterator[EngineStep]:
        return self.engine.generate(job.prompt_ids, job.options, job.request_id, job.priority)

    async def open_streams(self, jobs: list[Job], lease: RequestLease) -> list[OpenStream]:
        """Start every job and wait for its first step, so early errors still get a status.

        On failure the lease is closed here; on success the caller must hand the streams to
        :func:`leased` so the lease is closed when the stream ends.
        """
        opened: list[OpenStream] = []
        stream: AsyncIterator[EngineStep] | None = None
        try:
            for job in jobs:
                stream = self._generate(job)
                first = await lease.guard.wait(anext(stream))
                opened.append(OpenStream(first, stream))
                stream = None
        except BaseException as exc:
            for unfinished in [*(o.rest for o in opened), *([stream] if stream else [])]:
                await unfinished.aclose()  # type: ignore[attr-defined]
            await lease.close(exc)
            raise
        return opened


@dataclass(slots=True)
class OpenStream:
    """An engine stream whose first step has already arrived."""

    first: EngineStep
    rest: AsyncIterator[EngineStep]


async def leased(
    streams: list[OpenStream], lease: RequestLease
) -> AsyncIterator[tuple[int, EngineStep]]:
    """Yield ``(stream index, step)`` under the deadline, counting tokens; close the lease
    (and the engine streams, which aborts unfinished requests) with the outcome.

    This is the per-token path: one stream (every chat request) is read directly, with
    no wrapping generator per concern; several are merged.
    """
    single = len(streams) == 1
    source: AsyncIterator[Any] = (
        streams[0].rest if single else merge_streams([_prepend(s) for s in streams])
    )
    wait = lease.guard.wait
    error: BaseException | None = None
    try:
        if single:
            first = streams[0].first
            lease.step(first.num_tokens)
            yield 0, first
        while True:
            try:
                item = await wait(anext(source))
            except StopAsyncIteration:
                break
            index, step = (0, item) if single else item
            lease.step(step.num_tokens)
            yield index, step
    except BaseException as exc:
        error = exc
        raise
    finally:
        await source.aclose()  # type: ignore[attr-defined]
        await lease.close(error)


async def _prepend(opened: OpenStream) -> AsyncIterator[EngineStep]:
    try:
        yield opened.first
        async for step in opened.rest:
            yield step
    finally:
        await opened.rest.aclose()  # type: ignore[attr-defined]


@dataclass(slots=True)
class Reply:
    """What a route sends: a JSON body or an SSE event stream, with extra headers."""

    headers: dict[str, str]
    body: dict[str, Any] | None = None
    events: AsyncIterator[bytes] | None = None
