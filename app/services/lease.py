"""``RequestLease``: everything one admitted request holds, released exactly once.

Admission takes, in order, what is cheapest to refuse first: the key's rate-limit charge
(429), a queue slot (429 queue full / 503 shed or timed out), a circuit-breaker permit (503).
The lease then travels with the work — for a stream, with the generator — and
:meth:`RequestLease.close` gives everything back: the breaker hears the outcome, the slot
frees, unused tokens are refunded, and the recorder writes metrics and the log context.
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import TypeVar

from app.auth.keys import Principal
from app.auth.ratelimit import Charge, RateLimiter
from app.auth.responses import RateLimitExceededError
from app.errors import GatewayError, GatewayTimeoutError
from app.observability.metrics import GatewayMetrics
from app.observability.recorder import RequestRecorder
from app.resilience.breaker import BreakerPermit, EngineBreaker
from app.resilience.deadline import Deadline, DeadlineGuard
from app.resilience.errors import (
    OverloadedError,
    QueueFullError,
    QueueTimeoutError,
    ShuttingDownError,
)
from app.resilience.queue import PriorityAdmission, Slot

T = TypeVar("T")

_SHED_REASONS: dict[type[GatewayError], str] = {
    QueueFullError: "queue_full",
    QueueTimeoutError: "queue_timeout",
    OverloadedError: "overloaded",
    ShuttingDownError: "draining",
}


@dataclass(slots=True)
class Guards:
    """The process-wide admission machinery a lease draws from."""

    limiter: RateLimiter
    admission: PriorityAdmission
    breaker: EngineBreaker
    metrics: GatewayMetrics

    def note_refusal(self, principal: Principal, exc: BaseException) -> None:
        """Count why a request was refused before it reached the engine."""
        if isinstance(exc, RateLimitExceededError):
            self.metrics.rate_limit_rejected(principal.name, exc.limit)
        elif isinstance(exc, GatewayError) and (reason := _SHED_REASONS.get(type(exc))):
            self.metrics.request_shed(reason)


@dataclass(slots=True)
class RequestLease:
    """What one request holds while it runs; see the module docstring."""

    charge: Charge
    slot: Slot
    permit: BreakerPermit
    recorder: RequestRecorder
    deadline: Deadline
    metrics: GatewayMetrics
    prompt_tokens: int
    completion_tokens: int = 0
    engine_started: bool = False
    closed: bool = field(default=False)
    # Every wait on the engine (first step, each later step, a whole non-streamed run).
    guard: DeadlineGuard = field(init=False)

    def __post_init__(self) -> None:
        self.guard = self.deadline.guard()

    def step(self, num_tokens: int) -> None:
        """An engine step produced ``num_tokens`` tokens (all choices together)."""
        self.engine_started = True
        self.completion_tokens += num_tokens
        self.recorder.token(num_tokens)

    async def close(self, error: BaseException | None = None) -> None:
        """Give everything back once; ``error`` is the outcome (None = success)."""
        if self.closed:
            return
        self.closed = True
        self.guard.close()
        if error is None:
            self.permit.record_success()
        else:
            self.permit.record_failure(error)
        self.slot.release()
        self._finish(error)
        used = self.prompt_tokens + self.completion_tokens if self.engine_started else 0
        await self.charge.settle(used)

    def _finish(self, error: BaseException | None) -> None:
        if isinstance(error, GatewayTimeoutError):
            self.metrics.request_timed_out()
        if isinstance(error, GatewayError):
            self.recorder.finish(error.status, self.prompt_tokens, None, error.code, error.message)
        elif isinstance(error, Exception):
            self.recorder.finish(500, self.prompt_tokens, None, "internal_error", str(error))
        else:  # success, or a client that went away (the middleware counts that as 499)
            self.recorder.finish(prompt_tokens=self.prompt_tokens)


async def open_lease(
    guards: Guards,
    principal: Principal,
    priority: int,
    deadline: Deadline,
    cost_tokens: int,
    prompt_tokens: int,
    recorder: RequestRecorder,
) -> RequestLease:
    """Charge, queue, and pass the breaker, in that order; undo what was taken on refusal."""
    charge = await _refusing(guards, principal, guards.limiter.charge(principal, cost_tokens))
    slot: Slot | None = None
    try:
        slot = await _refusing(guards, principal, guards.admission.acquire(priority, deadline))
        recorder.admitted(slot.waited_s, priority)
        permit = guards.breaker.admit()
    except BaseException:
        if slot is not None:
            slot.release()
        await charge.settle(0)
        raise
    return RequestLease(charge, slot, permit, recorder, deadline, guards.metrics, prompt_tokens)


async def _refusing(guards: Guards, principal: Principal, awaitable: Awaitable[T]) -> T:
    try:
        return await awaitable
    except GatewayError as exc:
        guards.note_refusal(principal, exc)
        raise
