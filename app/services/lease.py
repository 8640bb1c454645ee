"""``RequestLease``: everything one request holds, given back exactly once.

The pipeline fills it as it takes things, in the order cheapest to refuse first: the key's
request and concurrency slot (429), its token reservation (429), a queue slot (429 queue
full / 503 shed or timed out), a circuit-breaker permit (503), the engine streams. Whatever
was taken, :meth:`RequestLease.close` gives back, however the request ends: the engine
streams are closed (aborting unfinished engine requests), the breaker hears the outcome,
the slot frees, unused tokens are refunded, and the recorder writes metrics and the log.

What a request pays: once it was handed to the engine, its prompt (prefill is work, even
for a client gone before the first token) and what was generated; before, nothing.

What the breaker hears: an engine fault. A deadline passed while the engine made no
progress counts; a deadline passed by a busy engine that kept producing output (for this
request or others) does not, nor does a client's own short ``timeout`` or a slow reader.

Each deployment has its own breaker. A request that fails over holds one deployment at a
time: :meth:`RequestLease.leave` settles the one that failed (its breaker hears it, its
streams close, what it generated is not billed) before the next is tried.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from app.auth.keys import Principal
from app.auth.ratelimit import Charge, RateLimiter
from app.auth.responses import RateLimitExceededError
from app.deployments.base import Deployment
from app.errors import GatewayError, GatewayTimeoutError
from app.observability.metrics import GatewayMetrics
from app.observability.recorder import RequestRecorder
from app.resilience.breaker import BreakerPermit
from app.resilience.deadline import Deadline, DeadlineGuard
from app.resilience.errors import (
    OverloadedError,
    QueueFullError,
    QueueTimeoutError,
    ShuttingDownError,
)
from app.resilience.queue import PriorityAdmission, Slot

_SHED_REASONS: dict[type[GatewayError], str] = {
    QueueFullError: "queue_full",
    QueueTimeoutError: "queue_timeout",
    OverloadedError: "overloaded",
    ShuttingDownError: "draining",
}


@dataclass(slots=True)
class Guards:
    """The process-wide admission machinery a lease draws from (breakers are per
    deployment: see :class:`app.deployments.base.DeploymentState`)."""

    limiter: RateLimiter
    admission: PriorityAdmission
    metrics: GatewayMetrics
    embedding_admission: PriorityAdmission  # its own concurrency limit (EMBEDDING_*)

    def note_refusal(self, principal: Principal, exc: BaseException) -> None:
        """Count why a request was refused before it reached the engine."""
        if isinstance(exc, RateLimitExceededError):
            self.metrics.rate_limit_rejected(principal.name, exc.limit)
        elif isinstance(exc, GatewayError) and (reason := _SHED_REASONS.get(type(exc))):
            self.metrics.request_shed(reason)


@dataclass(slots=True)
class RequestLease:
    """What one request holds; see the module docstring."""

    deadline: Deadline
    metrics: GatewayMetrics
    # How long an engine silence makes it stalled: it tells a hung deployment from a busy
    # one when a deadline passes.
    stall_s: float
    charge: Charge | None = None
    slot: Slot | None = None
    recorder: RequestRecorder | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    closed: bool = False
    # The deployment running the request, its breaker permit, and when it got the request.
    deployment: Deployment | None = None
    permit: BreakerPermit | None = None
    next_permit: BreakerPermit | None = None  # taken for a resumption, before the hand-over
    submitted_at: float | None = None
    billable: bool = False  # a deployment had the request: its prompt is paid for
    # Engine streams and chunk generators to close (``aclose()``) when the request ends.
    streams: list[Any] = field(default_factory=list)
    guard: DeadlineGuard = field(init=False)

    def __post_init__(self) -> None:
        self.guard = self.deadline.guard()

    def use(self, deployment: Deployment, permit: BreakerPermit) -> None:
        """Run on ``deployment`` from now on (its breaker let this request through)."""
        self.deployment, self.permit = deployment, permit
        self.submitted_at = time.monotonic()
        deployment.state.begin()

    def submitted(self) -> None:
        """The deployment was handed the request: from now on its prompt is paid for."""
        self.billable = True

    def step(self, num_tokens: int) -> None:
        """An engine step produced ``num_tokens`` tokens (all choices together)."""
        self.completion_tokens += num_tokens
        if self.recorder is not None:
            self.recorder.token(num_tokens)

    async def leave(self, error: BaseException) -> None:
        """The deployment failed before the answer began: settle it and forget its output,
        so that another one can take the request."""
        await self._close_streams()
        self._settle_deployment(error, outcome="retried")
        self.completion_tokens = 0

    def hand_over(self, deployment: Deployment, error: BaseException) -> None:
        """A stream continues on ``deployment`` after its own failed mid-stream: settle the
        old one (its breaker hears ``error``) and keep what was generated (it was sent)."""
        self._settle_deployment(error, outcome="resumed_away")
        assert self.next_permit is not None, "take the permit first (ResumeContext)"
        permit, self.next_permit = self.next_permit, None
        self.use(deployment, permit)

    async def close(self, error: BaseException | None = None) -> None:
        """Give everything back once; ``error`` is the outcome (None = success)."""
        if self.closed:
            return
        self.closed = True
        await self._close_streams()
        self.guard.close()
        if self.next_permit is not None:
            self.next_permit.release()
        self._settle_deployment(error, outcome=_outcome(error))
        if self.slot is not None:
            self.slot.release()
        if isinstance(error, GatewayTimeoutError):
            self.metrics.request_timed_out()
        if self.recorder is not None:
            _finish(self.recorder, self.prompt_tokens, error)
        if self.charge is not None:
            used = self.prompt_tokens + self.completion_tokens if self.billable else 0
            await self.charge.settle(used)

    async def _close_streams(self) -> None:
        streams, self.streams = self.streams, []
        for stream in reversed(streams):
            await stream.aclose()  # aborts the engine request if it is still running

    def _settle_deployment(self, error: BaseException | None, outcome: str) -> None:
        deployment, permit = self.deployment, self.permit
        if deployment is None or permit is None:
            return
        self.deployment = self.permit = None
        self._tell_breaker(deployment, permit, error)
        duration = time.monotonic() - (self.submitted_at or time.monotonic())
        deployment.state.end(outcome, duration)
        state = deployment.state
        self.metrics.deployment_finished(state.model_id, state.name, outcome, duration)

    def _tell_breaker(
        self, deployment: Deployment, permit: BreakerPermit, error: BaseException | None
    ) -> None:
        if error is None:
            permit.record_success()
        elif isinstance(error, GatewayTimeoutError) and not self._silent(deployment):
            permit.release()  # the engine kept working: the deadline was the request's
        else:
            permit.record_failure(error)

    def _silent(self, deployment: Deployment) -> bool:
        """No output from the deployment since it got this request, or for a stall's length."""
        if self.submitted_at is None:
            return False
        since = max(self.submitted_at, time.monotonic() - self.stall_s)
        return deployment.last_progress_at < since


def _outcome(error: BaseException | None) -> str:
    """How a request ended, for its deployment's numbers: a client's doing is not a fault."""
    if error is None:
        return "ok"
    if getattr(error, "client_chosen", False) or not isinstance(error, Exception):
        return "client_error"  # its own short timeout, a slow reader, a cancellation
    if isinstance(error, GatewayError) and error.status < 500:
        return "client_error"
    return "failed"


def _finish(recorder: RequestRecorder, prompt_tokens: int, error: BaseException | None) -> None:
    if isinstance(error, GatewayError):
        recorder.finish(error.status, prompt_tokens, None, error.code, error.message)
    elif isinstance(error, Exception):
        recorder.finish(500, prompt_tokens, None, "internal_error", str(error))
    else:  # success, or a cancelled request (the middleware counts a gone client as 499)
        recorder.finish(prompt_tokens=prompt_tokens)
