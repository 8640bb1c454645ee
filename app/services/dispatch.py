"""Running a planned request on a deployment, failing over before the first byte.

The router gives the order (the model's available deployments, then its fallbacks'). Each
is tried while the request's deadline lasts, at most ``routing.max_attempts`` of them: its
breaker must let the request through; then a stream must deliver its first step (or a
non-streamed answer must complete). A retryable failure there — a dead or restarting
engine, a refused connection, 5xx, 429, a garbled or cut stream — settles that deployment
(its breaker hears it) and the next is tried; a client's mistake is answered at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Generic, TypeVar

from app.deployments.base import Deployment, UpstreamError
from app.engine.protocol import EngineStep, Job
from app.errors import ContextLengthExceededError, EngineUnavailableError, GatewayError
from app.observability.context import note_request
from app.resilience.breaker import HALF_OPEN
from app.routing.router import ModelRoute, Router
from app.services.endpoint import Chunk, Endpoint, JobResult, R, Reply, StreamFormatter
from app.services.formatting import ChoiceResult, ResponseHead
from app.services.lease import RequestLease
from app.services.prompt_log import PromptLog
from app.services.resume import ResumableStream, ResumeContext, not_resumable_reason
from app.services.streams import OpenStream, merge_streams

log = logging.getLogger(__name__)
NO_DEPLOYMENT_RETRY_S = 5.0
TRIAL_WAIT_S = 5.0  # longest wait for a half-open breaker's trial before passing it over
P = TypeVar("P")
T = TypeVar("T")


def retryable(error: BaseException) -> bool:
    """Whether another deployment may answer instead (the engine, not the request, failed)."""
    if isinstance(error, UpstreamError):
        return error.retryable
    return isinstance(error, EngineUnavailableError)


class Dispatch(Generic[R]):
    """One request's attempts; :meth:`run` returns the reply of the one that answered."""

    def __init__(
        self,
        lease: RequestLease,
        router: Router,
        endpoint: Endpoint[R],
        log_: PromptLog,
        rebuild: Callable[[ModelRoute, Any], list[Job]],
        resume_attempts: int,
        on_complete: Callable[[list[JobResult]], Awaitable[None]] | None = None,
    ) -> None:
        self.lease, self.router, self.endpoint, self.log = lease, router, endpoint, log_
        self._rebuild = rebuild
        self.resume_attempts = resume_attempts
        self.on_complete = on_complete  # told the results of an answer that completed

    async def run(self, plan: Any) -> Reply:
        attempts = self.router.plan(plan.route, plan.key)

        async def answer(route: ModelRoute, deployment: Deployment, jobs: list[Job]) -> Reply:
            plan.answered_by = route
            return await self._answer(plan, route, deployment, jobs)

        return await first_answer(
            self.lease, self.router, plan.route, attempts, lambda r: self._jobs(r, plan), answer
        )

    def _jobs(self, route: ModelRoute, plan: Any) -> list[Job] | None:
        if route is plan.route:
            return list(plan.jobs)
        try:  # a fallback model: its own tokenizer and context length
            return self._rebuild(route, plan)
        except ContextLengthExceededError:
            return None

    async def _answer(
        self, plan: Any, route: ModelRoute, deployment: Deployment, jobs: list[Job]
    ) -> Reply:
        head = plan.head if route is plan.route else _head_for(plan.head, route)
        assert self.lease.charge is not None
        headers = self.lease.charge.headers()
        context = self._resume_context(plan, route, jobs)
        if plan.streaming:
            opened = await self._open_streams(deployment, jobs)
            sources = [
                ResumableStream(o.first, o.rest, job, context)
                for o, job in zip(opened, jobs, strict=True)
            ]
            self.lease.streams.extend(sources)
            formatter = self.endpoint.formatter(head, plan.req, jobs, route)
            events = self._events(sources, formatter, jobs)
            self.lease.streams.append(events)  # closed with the lease if the reply stops early
            return Reply(headers, events=events)
        results = await self._collect(deployment, jobs, context)
        self.log.completion(c.text for r in results for c in r.choices)
        if self.on_complete is not None:
            await self.on_complete(results)
        return Reply(headers, body=self.endpoint.body(head, plan.req, results, route))

    def _generate(self, deployment: Deployment, job: Job) -> AsyncIterator[EngineStep]:
        stream = deployment.generate(job)
        self.lease.streams.append(stream)
        self.lease.submitted()
        return stream

    async def _open_streams(self, deployment: Deployment, jobs: list[Job]) -> list[OpenStream]:
        """Start every job and wait for its first step, so early errors still get a status."""
        opened = []
        for job in jobs:
            stream = self._generate(deployment, job)
            try:
                first = await self.lease.guard.wait(anext(stream))
            except StopAsyncIteration:  # an upstream that answered nothing at all
                first = EngineStep([], finished=True)
            opened.append(OpenStream(first, stream))
        return opened

    def _resume_context(self, plan: Any, route: ModelRoute, jobs: list[Job]) -> ResumeContext:
        reason = not_resumable_reason(jobs[0].options, len(jobs))
        return ResumeContext(
            self.lease, self.router, route, plan.key, self.resume_attempts,
            self.lease.metrics, reason,
        )  # fmt: skip

    async def _collect(
        self, deployment: Deployment, jobs: list[Job], context: ResumeContext
    ) -> list[JobResult]:
        """Run every job to its end under the deadline; one failing aborts its siblings."""
        try:
            async with self.lease.guard, asyncio.TaskGroup() as group:
                tasks = [
                    group.create_task(self._collect_one(deployment, job, context)) for job in jobs
                ]
        except BaseExceptionGroup as failures:
            raise _first_error(failures) from None
        return [task.result() for task in tasks]

    async def _collect_one(
        self, deployment: Deployment, job: Job, context: ResumeContext
    ) -> JobResult:
        choices = [ChoiceResult(index=i) for i in range(job.options.n)]
        async for step in ResumableStream(None, self._generate(deployment, job), job, context):
            self.lease.step(step.num_tokens)
            for delta in step.choices:
                choices[delta.index].add(delta)
        return JobResult(job, choices)

    async def _events(
        self, sources: list[ResumableStream], formatter: StreamFormatter, jobs: list[Job]
    ) -> AsyncIterator[list[Chunk]]:
        """The stream's chunks, one list per engine step (the per-token path).

        One stream (every chat request) is read directly, with no wrapping generator per
        concern; several are merged.
        """
        lease, wait, prompt_log = self.lease, self.lease.guard.wait, self.log
        single = len(sources) == 1
        source: AsyncIterator[Any] = sources[0] if single else merge_streams(sources)
        lease.streams.append(source)
        kept = _Results(jobs) if self.on_complete is not None else None
        yield formatter.opening()
        while True:
            try:
                item = await wait(anext(source))
            except StopAsyncIteration:
                break
            index, step = (0, item) if single else item
            lease.step(step.num_tokens)
            if prompt_log.texts is not None:
                prompt_log.step(step)
            if kept is not None:
                kept.add(index, step)
            yield formatter.step(index, step)
        prompt_log.completion()
        if kept is not None and self.on_complete is not None:
            await self.on_complete(kept.results)
        yield formatter.closing(lease.prompt_tokens, lease.completion_tokens)


class _Results:
    """A stream's answer, kept as it goes (only when it is to be cached)."""

    def __init__(self, jobs: list[Job]) -> None:
        self.results = [
            JobResult(job, [ChoiceResult(index=i) for i in range(job.options.n)]) for job in jobs
        ]

    def add(self, index: int, step: EngineStep) -> None:
        choices = self.results[index].choices
        for delta in step.choices:
            choices[delta.index].add(delta)


async def first_answer(
    lease: RequestLease,
    router: Router,
    route: ModelRoute,
    attempts: list[tuple[ModelRoute, Deployment]],
    prepare: Callable[[ModelRoute], P | None],
    answer: Callable[[ModelRoute, Deployment, P], Awaitable[T]],
) -> T:
    """The answer of the first of ``attempts`` (at most ``routing.max_attempts``) that gives
    one. ``prepare`` makes a candidate model's work (None: it cannot take this request);
    a deployment whose breaker refuses is passed over; a retryable failure within the
    deadline settles that deployment (its breaker hears it) and the next is tried."""
    last: BaseException | None = None
    attempts = attempts[: router.catalog.routing.max_attempts]
    for candidate, deployment in attempts:
        work = prepare(candidate)
        permit = await _breaker_permit(deployment, lease) if work is not None else None
        if work is None or permit is None:
            continue
        lease.use(deployment, permit)
        note_request(model=candidate.id, deployment=deployment.state.name)
        try:
            return await answer(candidate, deployment, work)
        except GatewayError as exc:
            _hint_ready_in(exc, deployment)
            if not retryable(exc) or lease.deadline.expired:
                raise
            log.warning(
                "deployment failed before the answer; trying the next",
                extra={"deployment": deployment.state.name, "error": exc.message},
            )
            await lease.leave(exc)
            last = exc
    raise last or _none_available(route, attempts)


async def _breaker_permit(deployment: Deployment, lease: RequestLease) -> Any:
    """The deployment's breaker permit, or None: open, or its half-open trial is taken and
    did not end within ``TRIAL_WAIT_S`` (a trial in flight is waited for: its verdict comes
    in well under a second, where refusing would turn a recovering deployment's every
    request into a 503)."""
    breaker = deployment.state.breaker
    for last_try in (False, True):
        try:
            return breaker.admit()
        except EngineUnavailableError:
            if last_try or breaker.state != HALF_OPEN:
                return None
            await breaker.trial_settled(min(TRIAL_WAIT_S, lease.deadline.remaining()))
    return None


def _hint_ready_in(error: GatewayError, deployment: Deployment) -> None:
    """A restarting engine's failure says when it should be back, not vLLM's fixed hint:
    a client honouring Retry-After then retries once, when it can be answered."""
    ready_in = deployment.ready_in_s
    if isinstance(error, EngineUnavailableError) and ready_in:
        error.retry_after = ready_in


def _none_available(route: ModelRoute, attempts: list[Any]) -> EngineUnavailableError:
    waits = [_wait_for(d) for d in route.deployments]
    retry = min((w for w in waits if w > 0), default=NO_DEPLOYMENT_RETRY_S)
    return EngineUnavailableError(
        f"No deployment of model `{route.id}` is available right now.", retry_after=retry
    )


def _wait_for(deployment: Deployment) -> float:
    """Seconds until ``deployment`` may take a request: its breaker, and its engine's
    predicted start (a restarting local engine), whichever is later."""
    return max(deployment.state.breaker.retry_after(), deployment.ready_in_s or 0.0)


def _head_for(head: ResponseHead, route: ModelRoute) -> ResponseHead:
    return ResponseHead(head.id, head.created, route.id)


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
