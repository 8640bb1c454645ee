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
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

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
    """What one request holds; see the module docstring."""

    deadline: Deadline
    metrics: GatewayMetrics
    # When the engine last returned output (monotonic seconds), and how long a silence
    # makes it stalled: together they tell a hung engine from a busy one at a deadline.
    engine_progress: Callable[[], float]
    stall_s: float
    charge: Charge | None = None
    slot: Slot | None = None
    permit: BreakerPermit | None = None
    recorder: RequestRecorder | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    submitted_at: float | None = None
    closed: bool = False
    # Engine streams and chunk generators to close (``aclose()``) when the request ends.
    streams: list[Any] = field(default_factory=list)
    guard: DeadlineGuard = field(init=False)

    def __post_init__(self) -> None:
        self.guard = self.deadline.guard()

    def submitted(self) -> None:
        """The request was handed to the engine: from now on its prompt is paid for."""
        if self.submitted_at is None:
            self.submitted_at = time.monotonic()

    def step(self, num_tokens: int) -> None:
        """An engine step produced ``num_tokens`` tokens (all choices together)."""
        self.completion_tokens += num_tokens
        if self.recorder is not None:
            self.recorder.token(num_tokens)

    async def close(self, error: BaseException | None = None) -> None:
        """Give everything back once; ``error`` is the outcome (None = success)."""
        if self.closed:
            return
        self.closed = True
        for stream in reversed(self.streams):
            await stream.aclose()  # aborts the engine request if it is still running
        self.guard.close()
        if self.permit is not None:
            self._tell_breaker(self.permit, error)
        if self.slot is not None:
            self.slot.release()
        if isinstance(error, GatewayTimeoutError):
            self.metrics.request_timed_out()
        if self.recorder is not None:
            _finish(self.recorder, self.prompt_tokens, error)
        if self.charge is not None:
            used = self.prompt_tokens + self.completion_tokens if self.submitted_at else 0
            await self.charge.settle(used)

    def _tell_breaker(self, permit: BreakerPermit, error: BaseException | None) -> None:
        if error is None:
            permit.record_success()
        elif isinstance(error, GatewayTimeoutError) and not self._engine_silent():
            permit.release()  # the engine kept working: the deadline was the request's
        else:
            permit.record_failure(error)

    def _engine_silent(self) -> bool:
        """No engine output since this request was submitted, or for a stall's length."""
        if self.submitted_at is None:
            return False  # it never reached the engine
        since = max(self.submitted_at, time.monotonic() - self.stall_s)
        return self.engine_progress() < since


def _finish(recorder: RequestRecorder, prompt_tokens: int, error: BaseException | None) -> None:
    if isinstance(error, GatewayError):
        recorder.finish(error.status, prompt_tokens, None, error.code, error.message)
    elif isinstance(error, Exception):
        recorder.finish(500, prompt_tokens, None, "internal_error", str(error))
    else:  # success, or a cancelled request (the middleware counts a gone client as 499)
        recorder.finish(prompt_tokens=prompt_tokens)
