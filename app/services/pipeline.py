"""The one request pipeline: every generation route runs through :meth:`RequestRun.start`.

The order, cheapest refusal first, and nothing worked on before it is paid for::

    authenticate (401) → charge the request (429) → read and parse the body (400/413)
    → cheap bounds (400/404) → tokenize (400) → charge the tokens (429)
    → queue (429/503) → breaker (503) → engine, under the deadline (503/504) → format

Parsing, templating and tokenizing run in a worker thread when the body is large, so a
heavy request never freezes the event loop (every stream and probe with it).

A run is an async context manager: whatever it took is in its :class:`RequestLease`, and
leaving the ``async with`` gives it all back, however the request ended — an error, a
client gone while queued or mid-stream (the response cancels the run), a deadline.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, Generic, Protocol, TypeVar, cast

from app.auth.keys import KeyStore, Principal
from app.config import Settings
from app.engine.protocol import EngineClient, EngineStep
from app.errors import (
    ClientDisconnectedError,
    ContextLengthExceededError,
    GatewayError,
    InvalidRequestError,
)
from app.observability.context import current_request
from app.resilience.deadline import Deadline
from app.resilience.settings import LOWEST_PRIORITY
from app.services.endpoint import (
    ChatPrompt,
    Chunk,
    Endpoint,
    Job,
    JobResult,
    Prompt,
    R,
    Reply,
    StreamFormatter,
    TextPrompt,
)
from app.services.formatting import ChoiceResult, ResponseHead
from app.services.lease import Guards, RequestLease
from app.services.models import ModelCatalog
from app.services.parsing import parse_json_object, validate
from app.services.streams import OpenStream, merge_streams, prepend

T = TypeVar("T")

# Bodies this large are parsed, templated and tokenized in a worker thread: on the loop,
# ~120k empty messages in 4 MiB froze every stream for 10 s (issue 11). Below this, the
# thread hand-off costs more than the work.
OFFLOAD_BODY_BYTES = 32 * 1024
LOG_TEXT_CHARS = 4096  # LOG_PROMPTS keeps this much of a prompt and a completion


class Inbound(Protocol):
    """The HTTP side of one request, as the pipeline sees it (no framework types)."""

    @property
    def disconnected(self) -> bool: ...

    def header(self, name: str) -> str | None: ...

    async def body(self) -> bytes: ...


class GenerationPipeline:
    """Shared by every generation route; :meth:`run` makes one :class:`RequestRun`."""

    def __init__(
        self, engine: EngineClient, settings: Settings, guards: Guards, keys: KeyStore
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.guards = guards
        self.keys = keys
        self.models = ModelCatalog(engine)

    def run(self, endpoint: Endpoint[R], inbound: Inbound) -> RequestRun[R]:
        return RequestRun(self, endpoint, inbound)


class RequestRun(Generic[R]):
    """One request through the pipeline; ``async with`` it, then :meth:`start`."""

    def __init__(self, pipeline: GenerationPipeline, endpoint: Endpoint[R], inbound: Inbound):
        self.pipeline, self.endpoint, self.inbound = pipeline, endpoint, inbound
        self.engine = pipeline.engine
        self.server = pipeline.settings.server
        resilience = pipeline.settings.resilience
        self.lease = RequestLease(
            Deadline(resilience.request_timeout_s),
            pipeline.guards.metrics,
            engine_progress=lambda: self.engine.last_progress_at,
            stall_s=resilience.engine_stall_s,
        )
        self.outcome: BaseException | None = None
        self._log_text: list[str] | None = None

    async def __aenter__(self) -> RequestRun[R]:
        return self

    async def __aexit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if isinstance(exc, asyncio.CancelledError) and self.inbound.disconnected:
            exc = ClientDisconnectedError("The client disconnected.")
        await self.lease.close(exc or self.outcome)

    def fail(self, error: BaseException) -> None:
        """The request ends with ``error``, already answered (a status or an SSE event)."""
        self.outcome = self.outcome or error

    # -- the order --------------------------------------------------------------------------

    async def start(self) -> Reply:
        """Everything up to the first byte; raises a :class:`GatewayError` to answer with."""
        guards, lease = self.pipeline.guards, self.lease
        principal = self.pipeline.keys.authenticate(self.inbound.header("authorization"))
        _note(key_name=principal.name)
        header_priority = _priority_header(self.inbound.header("x-priority"))
        lease.charge = await self._refusing(principal, guards.limiter.admit(principal))
        raw = await lease.guard.wait(self.inbound.body())
        offload = len(raw) >= OFFLOAD_BODY_BYTES
        req = await _maybe_in_thread(offload, self._parse, raw, self.inbound.header("content-type"))
        streaming = self.endpoint.streams(req)
        _note(stream=streaming)
        lease.deadline.narrow(req.timeout)
        lease.guard.close()  # re-armed at the next wait, on the narrowed deadline
        model = self.pipeline.models.resolve(req.model, principal)
        lease.recorder = guards.metrics.recorder(model)
        priority = _priority(principal, req.priority, header_priority)
        head = ResponseHead(
            f"{self.endpoint.id_prefix}-{uuid.uuid4().hex}", int(time.time()), model
        )
        prompts = self.endpoint.prompts(req, self.server)
        ids = await _maybe_in_thread(offload, self._tokenize, prompts)
        jobs = self._jobs(head, req, prompts, ids, priority, streaming)
        lease.prompt_tokens = sum(len(job.prompt_ids) for job in jobs)
        self._keep_prompt(prompts)
        cost = lease.prompt_tokens + sum(j.options.n * (j.options.max_tokens or 0) for j in jobs)
        await self._refusing(principal, lease.charge.reserve(cost))
        lease.slot = await self._refusing(
            principal, guards.admission.acquire(priority, lease.deadline)
        )
        lease.recorder.admitted(lease.slot.waited_s, priority)
        lease.permit = guards.breaker.admit()
        headers = lease.charge.headers()
        if streaming:
            opened = await self._open_streams(jobs)
            formatter = self.endpoint.formatter(head, req, jobs, self.engine.decode)
            return Reply(headers, events=self._tracked(self._events(opened, formatter)))
        results = await self._collect(jobs)
        self._keep_completion(c.text for r in results for c in r.choices)
        return Reply(headers, body=self.endpoint.body(head, req, results, self.engine.decode))

    def _parse(self, raw: bytes, content_type: str | None) -> R:
        data = parse_json_object(raw, content_type)
        self.endpoint.precheck(data, self.server)
        return cast(R, validate(cast(Any, self.endpoint.request_model), data))

    async def _refusing(self, principal: Principal, awaitable: Any) -> Any:
        try:
            return await awaitable
        except GatewayError as exc:
            self.pipeline.guards.note_refusal(principal, exc)
            raise

    # -- prompts and jobs --------------------------------------------------------------------

    def _tokenize(self, prompts: list[Prompt]) -> list[list[int]]:
        return [self._encode(prompt) for prompt in prompts]

    def _encode(self, prompt: Prompt) -> list[int]:
        if isinstance(prompt, ChatPrompt):
            return self.engine.encode_chat(prompt.messages, prompt.tools)
        if isinstance(prompt, TextPrompt):
            return self.engine.encode_prompt(prompt.text)
        return prompt.ids

    def _jobs(
        self,
        head: ResponseHead,
        req: R,
        prompts: list[Prompt],
        ids: list[list[int]],
        priority: int,
        streaming: bool,
    ) -> list[Job]:
        jobs = []
        for i, (prompt, prompt_ids) in enumerate(zip(prompts, ids, strict=True)):
            max_tokens = self._max_tokens(len(prompt_ids), req.requested_max_tokens)
            if not streaming:
                self._check_logprobs_memory(req, max_tokens)
            request_id = head.id if len(prompts) == 1 else f"{head.id}-{i}"
            options = req.to_sampling_options(max_tokens)
            jobs.append(Job(request_id, prompt, prompt_ids, options, priority))
        return jobs

    def _max_tokens(self, prompt_len: int, requested: int | None) -> int:
        limit = self.engine.model_info.max_model_len
        wanted = requested or self.server.default_max_tokens or max(limit - prompt_len, 1)
        if prompt_len + wanted > limit:
            param = self.endpoint.prompt_param
            raise ContextLengthExceededError(
                f"This model's maximum context length is {limit} tokens. However, you requested "
                f"{prompt_len + wanted} tokens ({prompt_len} in the {param}, {wanted} in the "
                f"completion). Please reduce the length of the {param} or the completion.",
                param=param,
            )
        return wanted

    def _check_logprobs_memory(self, req: R, max_tokens: int) -> None:
        """A non-streamed answer holds every token's alternatives until it is sent."""
        entries, limit = req.logprob_entries(max_tokens), self.server.max_logprobs_entries
        if entries > limit:
            raise InvalidRequestError(
                f"This request could return {entries} logprob entries (n x max_tokens x "
                f"(top_logprobs + 1)); at most {limit} are returned without streaming. Lower "
                "max_tokens or top_logprobs, or set stream: true.",
                param="max_tokens",
            )

    # -- the engine ----------------------------------------------------------------------------

    def _generate(self, job: Job) -> AsyncIterator[EngineStep]:
        stream = self.engine.generate(job.prompt_ids, job.options, job.request_id, job.priority)
        self.lease.streams.append(stream)
        self.lease.submitted()
        return stream

    async def _open_streams(self, jobs: list[Job]) -> list[OpenStream]:
        """Start every job and wait for its first step, so early errors still get a status."""
        opened = []
        for job in jobs:
            stream = self._generate(job)
            first = await self.lease.guard.wait(anext(stream))
            opened.append(OpenStream(first, stream))
        return opened

    async def _collect(self, jobs: list[Job]) -> list[JobResult]:
        """Run every job to its end under the deadline; one failing aborts its siblings."""
        try:
            async with self.lease.guard, asyncio.TaskGroup() as group:
                tasks = [group.create_task(self._collect_one(job)) for job in jobs]
        except BaseExceptionGroup as failures:
            raise _first_error(failures) from None
        return [task.result() for task in tasks]

    async def _collect_one(self, job: Job) -> JobResult:
        choices = [ChoiceResult(index=i) for i in range(job.options.n)]
        async for step in self._generate(job):
            self.lease.step(step.num_tokens)
            for delta in step.choices:
                choices[delta.index].add(delta)
        return JobResult(job, choices)

    def _tracked(self, events: AsyncIterator[list[Chunk]]) -> AsyncIterator[list[Chunk]]:
        self.lease.streams.append(events)  # closed with the lease if the response stops early
        return events

    async def _events(
        self, opened: list[OpenStream], formatter: StreamFormatter
    ) -> AsyncIterator[list[Chunk]]:
        """The stream's chunks, one list per engine step (the per-token path).

        One stream (every chat request) is read directly, with no wrapping generator per
        concern; several are merged.
        """
        lease, wait = self.lease, self.lease.guard.wait
        single = len(opened) == 1
        source: AsyncIterator[Any] = (
            opened[0].rest if single else merge_streams([prepend(s) for s in opened])
        )
        lease.streams.append(source)
        yield formatter.opening()
        if single:
            lease.step(opened[0].first.num_tokens)
            self._keep_step(opened[0].first)
            yield formatter.step(0, opened[0].first)
        while True:
            try:
                item = await wait(anext(source))
            except StopAsyncIteration:
                break
            index, step = (0, item) if single else item
            lease.step(step.num_tokens)
            if self._log_text is not None:
                self._keep_step(step)
            yield formatter.step(index, step)
        self._keep_completion(self._log_text or ())
        yield formatter.closing(lease.prompt_tokens, lease.completion_tokens)

    # -- LOG_PROMPTS ---------------------------------------------------------------------------

    def _keep_prompt(self, prompts: list[Prompt]) -> None:
        recorder = self.lease.recorder
        if recorder is not None and recorder.ctx.log_prompts:
            recorder.content(prompt=_clip(repr([_shown(p) for p in prompts])))
            self._log_text = []

    def _keep_step(self, step: EngineStep) -> None:
        if self._log_text is not None:
            self._log_text.extend(delta.text for delta in step.choices)

    def _keep_completion(self, texts: Any) -> None:
        recorder = self.lease.recorder
        if recorder is not None and recorder.ctx.log_prompts:
            recorder.content(completion=_clip("".join(texts)))


def _shown(prompt: Prompt) -> Any:
    if isinstance(prompt, ChatPrompt):
        return prompt.messages
    return prompt.text if isinstance(prompt, TextPrompt) else prompt.ids


def _clip(text: str) -> str:
    return text if len(text) <= LOG_TEXT_CHARS else text[:LOG_TEXT_CHARS] + "…"


async def _maybe_in_thread(offload: bool, func: Callable[..., T], *args: Any) -> T:
    return await asyncio.to_thread(func, *args) if offload else func(*args)


def _first_error(failures: BaseExceptionGroup) -> BaseException:
    """The error to answer with when sibling jobs fail: a client's mistake before others."""
    leaves = list(_leaves(failures))
    gateway = [exc for exc in leaves if isinstance(exc, GatewayError)]
    return min(gateway, key=lambda exc: exc.status) if gateway else leaves[0]


def _leaves(group: BaseExceptionGroup) -> Any:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc


def _priority_header(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        priority = int(value)
    except ValueError:
        priority = -1
    if not 0 <= priority <= LOWEST_PRIORITY:
        raise InvalidRequestError(
            f"X-Priority must be an integer from 0 to {LOWEST_PRIORITY}.", param="X-Priority"
        )
    return priority


def _priority(principal: Principal, body: int | None, header: int | None) -> int:
    """The key's priority, lowered (never raised) by the body's ``priority`` or X-Priority."""
    asked = [p for p in (body, header) if p is not None]
    return min(max([principal.priority, *asked]), LOWEST_PRIORITY)


def _note(**fields: Any) -> None:
    ctx = current_request()
    if ctx is not None:
        for name, value in fields.items():
            setattr(ctx, name, value)
