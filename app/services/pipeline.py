"""The one request pipeline: every generation route runs through :meth:`RequestRun.start`.

The order, cheapest refusal first, and nothing worked on before it is paid for::

    authenticate (401) → charge the request (429) → read and parse the body (400/413)
    → resolve the model (404) → tokenize with its tokenizer, check its context (400,
      or on to its context_overflow model) → charge the tokens (429) → queue (429/503)
    → route: each deployment's breaker (503), failover before the first byte
    → the engine, under the deadline (503/504) → format

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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar, cast

from app.auth.keys import KeyStore, Principal
from app.cache.service import CachedAnswer, ResponseCache
from app.config import Settings
from app.deployments.base import Deployment
from app.errors import (
    ClientDisconnectedError,
    ContextLengthExceededError,
    GatewayError,
    InvalidRequestError,
)
from app.observability.context import note_request
from app.resilience.deadline import Deadline
from app.resilience.settings import LOWEST_PRIORITY
from app.routing.registry import ModelRegistry
from app.routing.router import ModelRoute, Router
from app.services.cached import CacheStep, replay
from app.services.dispatch import Dispatch
from app.services.endpoint import ChatPrompt, Endpoint, Job, Prompt, R, Reply, TextPrompt
from app.services.formatting import ResponseHead
from app.services.lease import Guards, RequestLease
from app.services.parsing import parse_json_object, validate
from app.services.prompt_log import PromptLog

T = TypeVar("T")

# Bodies this large are parsed, templated and tokenized in a worker thread: on the loop,
# ~120k empty messages in 4 MiB froze every stream for 10 s (issue 11). Below this, the
# thread hand-off costs more than the work.
OFFLOAD_BODY_BYTES = 32 * 1024
SESSION_HEADER = "x-session-id"


class Inbound(Protocol):
    """The HTTP side of one request, as the pipeline sees it (no framework types)."""

    @property
    def disconnected(self) -> bool: ...

    def header(self, name: str) -> str | None: ...

    async def body(self) -> bytes: ...


class GenerationPipeline:
    """Shared by every generation route; :meth:`run` makes one :class:`RequestRun`."""

    def __init__(
        self,
        registry: ModelRegistry,
        settings: Settings,
        guards: Guards,
        keys: KeyStore,
        cache: ResponseCache | None = None,
    ) -> None:
        self.registry = registry
        self.settings = settings
        self.guards = guards
        self.keys = keys
        self.cache = cache

    @property
    def router(self) -> Router:
        return self.registry.router

    def run(self, endpoint: Endpoint[R], inbound: Inbound) -> RequestRun[R]:
        return RequestRun(self, endpoint, inbound)

    def runner(self, endpoint: Endpoint[Any]) -> Callable[[Inbound], PipelineRun[Any]]:
        """What a generation route's response starts for each request."""
        return lambda inbound: RequestRun(self, endpoint, inbound)


@dataclass(slots=True)
class Plan(Generic[R]):
    """A parsed request, bound to a model and tokenized: what admission and dispatch need."""

    req: R
    route: ModelRoute
    head: ResponseHead
    prompts: list[Prompt]
    jobs: list[Job]
    priority: int
    streaming: bool
    key: bytes | None  # affinity: a session, or the prompt's prefix (prefix_affinity)
    endpoint_name: str = ""
    answered_by: ModelRoute | None = None  # the model that answered (a fallback, maybe)


class RunRequest(Protocol):
    """What every run reads of its request model (generation's and embeddings')."""

    model: Any
    priority: int | None
    timeout: float | None


Q = TypeVar("Q", bound=RunRequest)


class PipelineRun(Generic[Q]):
    """The steps every route shares (the key, the body, the lease); ``async with`` a run,
    then :meth:`start`, which each kind of run orders as the module docstring says."""

    request_model: type[Q]

    def __init__(self, pipeline: GenerationPipeline, inbound: Inbound):
        self.pipeline, self.inbound = pipeline, inbound
        self.router = pipeline.router  # one catalogue for the whole request, reloads or not
        self.server = pipeline.settings.server
        resilience = pipeline.settings.resilience
        self.lease = RequestLease(
            Deadline(resilience.request_timeout_s),
            pipeline.guards.metrics,
            stall_s=resilience.engine_stall_s,
        )
        self.outcome: BaseException | None = None
        self.log = PromptLog()

    async def __aenter__(self) -> PipelineRun[Q]:
        return self

    async def __aexit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if isinstance(exc, asyncio.CancelledError) and self.inbound.disconnected:
            exc = ClientDisconnectedError("The client disconnected.")
        await self.lease.close(exc or self.outcome)

    def fail(self, error: BaseException) -> None:
        """The request ends with ``error``, already answered (a status or an SSE event)."""
        self.outcome = self.outcome or error

    async def start(self) -> Reply:
        """Everything up to the first byte; raises a :class:`GatewayError` to answer with."""
        raise NotImplementedError

    async def _admit_key(self) -> tuple[Principal, int | None]:
        principal = self.pipeline.keys.authenticate(self.inbound.header("authorization"))
        note_request(key_name=principal.name)
        header_priority = _priority_header(self.inbound.header("x-priority"))
        limiter = self.pipeline.guards.limiter
        self.lease.charge = await self._refusing(principal, limiter.admit(principal))
        return principal, header_priority

    async def _read_request(self) -> tuple[Q, bool]:
        """The validated request, and whether it was large enough to work on off the loop."""
        raw = await self.lease.guard.wait(self.inbound.body())
        offload = len(raw) >= OFFLOAD_BODY_BYTES
        content_type = self.inbound.header("content-type")
        req = await maybe_in_thread(offload, self._parse, raw, content_type)
        self.lease.deadline.narrow(req.timeout)
        self.lease.guard.close()  # re-armed at the next wait, on the narrowed deadline
        return req, offload

    def _parse(self, raw: bytes, content_type: str | None) -> Q:
        data = parse_json_object(raw, content_type)
        self._precheck(data)
        return cast(Q, validate(cast(Any, self.request_model), data))

    def _precheck(self, data: dict[str, Any]) -> None:
        """Cheap bounds on the parsed JSON, before it is validated (a 400 if out)."""

    async def _refusing(self, principal: Principal, awaitable: Any) -> Any:
        try:
            return await awaitable
        except GatewayError as exc:
            self.pipeline.guards.note_refusal(principal, exc)
            raise


class RequestRun(PipelineRun[R]):
    """One generation request (chat, completions, the simple routes)."""

    def __init__(self, pipeline: GenerationPipeline, endpoint: Endpoint[R], inbound: Inbound):
        super().__init__(pipeline, inbound)
        self.endpoint = endpoint
        self.request_model = endpoint.request_model

    def _precheck(self, data: dict[str, Any]) -> None:
        self.endpoint.precheck(data, self.server)

    # -- the order --------------------------------------------------------------------------

    async def start(self) -> Reply:
        """Everything up to the first byte; raises a :class:`GatewayError` to answer with."""
        principal, header_priority = await self._admit_key()
        req, offload = await self._read_request()
        plan = await self._plan(req, principal, header_priority, offload)
        cache = CacheStep(
            self.pipeline.cache, plan, principal, self.inbound.header("cache-control")
        )
        hit = await cache.lookup()
        if hit is not None:
            return await self._replay(plan, hit, cache)
        await self._admit_work(principal, plan)
        attempts = self.pipeline.settings.resilience.resume_attempts
        dispatch = Dispatch(
            self.lease, self.router, self.endpoint, self.log, self.jobs_for, attempts,
            on_complete=cache.on_complete(),
        )  # fmt: skip
        reply = await dispatch.run(plan)
        reply.headers |= cache.headers()
        return reply

    async def _replay(self, plan: Plan[R], hit: CachedAnswer, cache: CacheStep) -> Reply:
        """A cache hit: no queue, no engine; its tokens charged only if configured."""
        lease = self.lease
        assert lease.charge is not None and self.pipeline.cache is not None
        if self.pipeline.cache.settings.cache_hit_charge == "tokens":
            completion = sum(c.num_tokens for choices in hit.jobs for c in choices)
            await lease.charge.reserve(lease.prompt_tokens + completion)
            lease.completion_tokens, lease.billable = completion, True
        note_request(model=plan.route.id, deployment="cache")
        return replay(self.endpoint, plan, hit, {**lease.charge.headers(), **cache.headers(hit)})

    async def _plan(
        self, req: R, principal: Principal, header_priority: int | None, offload: bool
    ) -> Plan[R]:
        streaming = self.endpoint.streams(req)
        note_request(stream=streaming)
        route = self.router.resolve(req.model, principal)
        self.lease.recorder = self.pipeline.guards.metrics.recorder(route.id)
        head = ResponseHead(
            f"{self.endpoint.id_prefix}-{uuid.uuid4().hex}", int(time.time()), route.id
        )
        prompts = self.endpoint.prompts(req, self.server, route)
        priority = request_priority(principal, req.priority, header_priority)
        plan = Plan(
            req, route, head, prompts, [], priority, streaming, None, self.endpoint.id_prefix
        )
        plan.route, plan.jobs = await maybe_in_thread(offload, self._fit, plan)
        if plan.route is not route:  # the overflow model answers, in name too
            plan.head = ResponseHead(head.id, head.created, plan.route.id)
        jobs = plan.jobs
        self.lease.prompt_tokens = sum(len(job.prompt_ids) for job in jobs)
        self.log.prompt(self.lease.recorder, prompts)
        plan.key = self._affinity(plan.route, req, jobs)
        return plan

    def _fit(self, plan: Plan[R]) -> tuple[ModelRoute, list[Job]]:
        """Tokenize for the plan's model; past its context, for its overflow model."""
        try:
            return plan.route, self.jobs_for(plan.route, plan)
        except ContextLengthExceededError:
            overflow = self.router.overflow(plan.route)
            if overflow is None:
                raise
            return overflow, self.jobs_for(overflow, plan)

    def jobs_for(self, route: ModelRoute, plan: Plan[R]) -> list[Job]:
        """Every prompt as a job for ``route``: its tokenizer, its context length."""
        jobs, req, head = [], plan.req, plan.head
        for i, prompt in enumerate(plan.prompts):
            ids = _encode(route, prompt)
            max_tokens = self._max_tokens(route, len(ids), req.requested_max_tokens)
            if not plan.streaming:
                self._check_logprobs_memory(req, max_tokens)
            request_id = head.id if len(plan.prompts) == 1 else f"{head.id}-{i}"
            options = req.to_sampling_options(max_tokens)
            jobs.append(Job(request_id, prompt, ids, options, plan.priority))
        return jobs

    def _max_tokens(self, route: ModelRoute, prompt_len: int, requested: int | None) -> int:
        limit = route.max_model_len
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

    def _affinity(self, route: ModelRoute, req: R, jobs: list[Job]) -> bytes | None:
        """A session (X-Session-ID, or the ``user`` field), else for prefix_affinity the
        first tokens of the prompt; None: no affinity."""
        session = self.inbound.header(SESSION_HEADER) or getattr(req, "user", None)
        if session:
            return session.encode()
        routing = self.router.catalog.routing
        if routing.strategy != "prefix_affinity":
            return None
        prefix = jobs[0].prompt_ids[: routing.prefix_tokens]
        return b"".join(token.to_bytes(4, "little") for token in prefix)

    async def _admit_work(self, principal: Principal, plan: Plan[R]) -> None:
        lease, guards = self.lease, self.pipeline.guards
        options = [job.options for job in plan.jobs]
        cost = lease.prompt_tokens + sum(o.n * (o.max_tokens or 0) for o in options)
        assert lease.charge is not None
        await self._refusing(principal, lease.charge.reserve(cost))
        admission = guards.admission.acquire(plan.priority, lease.deadline)
        lease.slot = await self._refusing(principal, admission)
        if lease.recorder is not None:
            lease.recorder.admitted(lease.slot.waited_s, plan.priority)


def _encode(route: ModelRoute, prompt: Prompt) -> list[int]:
    tokenizer = route.tokenizer
    if isinstance(prompt, ChatPrompt):
        return tokenizer.encode_chat(prompt.messages, prompt.tools)
    if isinstance(prompt, TextPrompt):
        return tokenizer.encode_prompt(prompt.text)
    return prompt.ids


async def maybe_in_thread(offload: bool, func: Callable[..., T], *args: Any) -> T:
    return await asyncio.to_thread(func, *args) if offload else func(*args)


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


def request_priority(principal: Principal, body: int | None, header: int | None) -> int:
    """The key's priority, lowered (never raised) by the body's ``priority`` or X-Priority."""
    asked = [p for p in (body, header) if p is not None]
    return min(max([principal.priority, *asked]), LOWEST_PRIORITY)


__all__ = [
    "Deployment", "GenerationPipeline", "Inbound", "PipelineRun", "Plan", "RequestRun",
    "maybe_in_thread", "request_priority",
]  # fmt: skip
