"""Streams that survive their deployment: token-exact resumption on another one.

A :class:`ResumableStream` reads one job's engine stream and remembers, per choice, the
token ids and text already handed on (to the client, or to a non-streamed answer). When the
deployment fails after that — a dead or stalled engine, a refused or dropped connection, an
upstream 5xx, a stream cut mid-event — each unfinished choice is sent to another live,
resumable deployment of the same model as *prompt + tokens so far*, for the tokens it has
left, with the same sampling settings (a ``seed`` offset by the tokens already drawn, so a
seeded request stays reproducible), and the stream goes on with the next token: no
duplicate, no gap, the same choice index.

After the seam the gateway spells the choice's text itself, from its token ids with the
model's tokenizer (so text the old engine held back — an unfinished UTF-8 character, the
tail that could start a stop string — is neither lost nor repeated), and applies the stop
strings itself over the whole text, so a stop string that straddles the seam still stops it.

A stream continues only on a deployment that can take it: an in-process engine, or a
remote one that declares ``resume: tokens``. Not resumable, said in the error if the
deployment fails: structured output (the grammar's state cannot be rebuilt from tokens), a
multi-prompt completion, a stream from a deployment that did not say which tokens it sent
(``send: request``), no other deployment to continue on, or ``RESUME_ATTEMPTS`` spent.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace

from app.deployments.base import Deployment
from app.engine.protocol import ChoiceDelta, EngineStep, Job, SamplingOptions, TokenPrompt
from app.errors import GatewayError
from app.observability.context import note_request
from app.observability.metrics import GatewayMetrics
from app.routing.router import ModelRoute, Router
from app.services.lease import RequestLease
from app.services.streams import merge_streams

log = logging.getLogger(__name__)
SEED_SPACE = 2**63


def not_resumable_reason(options: SamplingOptions, jobs: int) -> str | None:
    """Why a request could not continue elsewhere, known before it starts (None: it can)."""
    if options.json_schema is not None or options.json_object:
        return "structured output (the grammar's state cannot be rebuilt from tokens)"
    if jobs > 1:
        return "a completion of several prompts"
    return None


@dataclass
class ChoiceTrack:
    """One choice's progress: what was handed on (token ids, text), and whether it ended."""

    index: int
    ids: list[int] = field(default_factory=list)
    parts: list[str] = field(default_factory=list)
    finished: bool = False
    ids_unknown: bool = False  # a step gave tokens without their ids: cannot resume

    @property
    def text(self) -> str:
        if len(self.parts) > 1:
            self.parts[:] = ["".join(self.parts)]
        return self.parts[0] if self.parts else ""

    def seen(self, delta: ChoiceDelta) -> None:
        if delta.token_ids is not None:
            self.ids.extend(delta.token_ids)
        elif delta.num_tokens:
            self.ids_unknown = True
        if delta.text:
            self.parts.append(delta.text)
        self.finished = self.finished or delta.finish_reason is not None


class Respeller:
    """Text of a resumed choice from its token ids, with the request's stop strings."""

    def __init__(self, decode: Callable[[list[int]], str], stops: list[str]) -> None:
        self.decode, self.stops = decode, stops
        self.hold = max((len(s) for s in stops), default=1) - 1

    def step(self, track: ChoiceTrack, delta: ChoiceDelta, done: bool) -> ChoiceDelta:
        """``delta`` of a continuation, re-spelled for ``track`` (which it updates)."""
        track.ids.extend(delta.token_ids or ())
        full, emitted = self.decode(track.ids), len(track.text)
        end, reason = len(full), delta.finish_reason
        stop_at = self._stop(full, emitted)
        if stop_at is not None:
            end, reason, done = stop_at, "stop", True
        elif not done:
            end = len(full.rstrip("\ufffd")) - self.hold  # an unfinished character, a stop start
        new = full[emitted : max(end, emitted)]
        if new:
            track.parts.append(new)
        track.finished = done
        return ChoiceDelta(
            track.index, new, delta.num_tokens, reason if done else None, delta.logprobs,
            delta.token_ids,
        )  # fmt: skip

    def _stop(self, full: str, emitted: int) -> int | None:
        start = max(0, emitted - self.hold)
        found = [i for s in self.stops if (i := full.find(s, start)) >= 0]
        return min(found) if found else None


class ResumableStream:
    """One job's steps, continued on another deployment when its own fails mid-stream."""

    def __init__(
        self,
        first: EngineStep | None,
        stream: AsyncIterator[EngineStep],
        job: Job,
        context: ResumeContext,
    ) -> None:
        self.job, self.context = job, context
        self._pending = first
        self._stream = stream
        self._tracks = [ChoiceTrack(i) for i in range(job.options.n)]
        skip = job.options.skip_special_tokens  # a tool parser may read special tokens
        decode = functools.partial(context.route.tokenizer.decode, skip_special_tokens=skip)
        self._respeller = Respeller(decode, job.options.stop)
        self._resumed = self._done = False
        self.attempts = 0

    def __aiter__(self) -> ResumableStream:
        return self

    async def __anext__(self) -> EngineStep:
        if self._pending is not None:
            step, self._pending = self._pending, None
            return self._handed_on(step)
        while not self._done:
            try:
                step = await anext(self._stream)
            except GatewayError as exc:
                await self._resume(exc)
                continue
            return self._handed_on(step)
        await self.aclose()  # every choice stopped here: abort what still generates
        raise StopAsyncIteration

    def _handed_on(self, step: EngineStep) -> EngineStep:
        if self._resumed:
            return self._respelled(step)
        for delta in step.choices:
            self._tracks[delta.index].seen(delta)
        return step

    def _respelled(self, step: EngineStep) -> EngineStep:
        choices = []
        for delta in step.choices:  # each continuation's choice carries its track's index
            track = self._tracks[delta.index]
            if track.finished:
                continue
            done = delta.finish_reason is not None
            choices.append(self._respeller.step(track, delta, done))
        self._done = all(t.finished for t in self._tracks)
        return EngineStep(choices, finished=self._done)

    async def _resume(self, error: GatewayError) -> None:
        if not self.attempts and not any(t.ids or t.parts or t.finished for t in self._tracks):
            raise error  # nothing handed on yet: the dispatcher fails over from scratch
        context = self.context
        reason = context.reason or self._why_not(error)
        if reason is not None:
            context.metrics.request_resumed("not_resumable")
            raise _not_resumed(error, reason) from error
        deployment = context.next_deployment()
        if deployment is None:
            context.metrics.request_resumed("failed")
            raise _not_resumed(error, "no other deployment could continue it") from error
        self.attempts += 1
        await self._stream.aclose()  # type: ignore[attr-defined]
        old = context.lease.deployment
        context.lease.hand_over(deployment, error)
        # A non-streamed answer's headers name the deployment that finished it; a stream's
        # were sent already: the log line names both.
        note_request(deployment=deployment.state.name, resumed_from=old.state.name if old else None)
        self._stream = self._continue_on(deployment)
        self._resumed = True
        context.metrics.request_resumed("resumed")
        log.warning(
            "stream resumed on another deployment",
            extra={"from": old.state.name if old else None, "to": deployment.state.name,
                   "tokens_sent": sum(len(t.ids) for t in self._tracks), "error": error.message},
        )  # fmt: skip

    def _why_not(self, error: GatewayError) -> str | None:
        from app.services.dispatch import retryable

        if not retryable(error):
            return "the failure is not one another deployment could avoid"
        if self.attempts >= self.context.max_attempts:
            return f"RESUME_ATTEMPTS ({self.context.max_attempts}) spent"
        if self.context.lease.deadline.expired:
            return "its deadline passed"
        if any(t.ids_unknown and not t.finished for t in self._tracks):
            return "the deployment did not say which tokens it sent (send: request)"
        return None

    def _continue_on(self, deployment: Deployment) -> AsyncIterator[EngineStep]:
        streams = [
            _indexed(deployment.generate(self._continuation(track)), track.index)
            for track in self._tracks
            if not track.finished
        ]
        return streams[0] if len(streams) == 1 else _merged(streams)

    def _continuation(self, track: ChoiceTrack) -> Job:
        """Prompt + what this choice already said, for what it has left, one choice."""
        options, sent = self.job.options, len(track.ids)
        seed = None if options.seed is None else (options.seed + sent) % SEED_SPACE
        continued = replace(
            options,
            n=1,
            max_tokens=max((options.max_tokens or 0) - sent, 1),
            min_tokens=max(options.min_tokens - sent, 0),
            seed=seed,
            stop=[],  # checked here, over the text on both sides of the seam
        )
        ids = [*self.job.prompt_ids, *track.ids]
        request_id = f"{self.job.request_id}-r{self.attempts}-{track.index}"
        return Job(request_id, TokenPrompt(ids), ids, continued, self.job.priority)

    async def aclose(self) -> None:
        await self._stream.aclose()  # type: ignore[attr-defined]


@dataclass
class ResumeContext:
    """What a resumption needs beyond the stream: where else to go, and the request's lease."""

    lease: RequestLease
    router: Router
    route: ModelRoute
    key: bytes | None
    max_attempts: int
    metrics: GatewayMetrics
    reason: str | None  # not resumable up front, and why

    def next_deployment(self) -> Deployment | None:
        """A live, resumable deployment of the model other than the one that failed, whose
        breaker lets the request through (the permit goes to the lease)."""
        failed = self.lease.deployment
        for route, deployment in self.router.plan(self.route, self.key):
            if route is not self.route or deployment is failed or not deployment.resumable:
                continue
            try:
                self.lease.next_permit = deployment.state.breaker.admit()
            except GatewayError:
                continue
            return deployment
        return None


async def _indexed(stream: AsyncIterator[EngineStep], index: int) -> AsyncIterator[EngineStep]:
    """A one-choice continuation, its deltas renumbered to the choice they continue."""
    try:
        async for step in stream:
            for delta in step.choices:
                delta.index = index
            yield step
    finally:
        await stream.aclose()  # type: ignore[attr-defined]


async def _merged(streams: list[AsyncIterator[EngineStep]]) -> AsyncIterator[EngineStep]:
    async for _, step in merge_streams(streams):
        yield step


def _not_resumed(error: GatewayError, reason: str) -> GatewayError:
    error.message = f"{error.message} The stream could not be resumed: {reason}."
    return error
