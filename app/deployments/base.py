"""One interface for every deployment of a model, in-process or remote.

A deployment runs :class:`~app.engine.protocol.Job`s and says how it is doing. What the
router needs of each — its own circuit breaker, requests in flight, health, recent latency
and errors — lives in :class:`DeploymentState`, the same for every kind. State is per
gateway replica: with N replicas each ejects and re-admits a deployment on its own.

Failures a deployment raises before its first step say whether another deployment may
take the request: :class:`UpstreamError` with ``retryable`` (connection refused, 5xx, 429,
a cut or garbled stream, a dead or restarting engine) or a client's mistake (4xx), which
no other deployment would answer differently.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from app.engine.protocol import EmbeddingJob, EngineStep, Job
from app.errors import GatewayError
from app.resilience.breaker import EngineBreaker
from app.resilience.stats import Ewma

UPSTREAM_RETRY_AFTER_S = 1.0


class UpstreamError(GatewayError):
    """A deployment failed in a way the gateway may route around (before the first byte).

    ``status`` is what the client sees if no deployment is left: 503 when the deployment
    is unreachable or overloaded, 502 when it answered something unusable, 504 when it hung.
    """

    status = 503
    type = "service_unavailable"
    default_code = "deployment_unavailable"
    retryable = True

    def __init__(self, message: str, *, retry_after: float | None = None, **fields: Any):
        # Every deployment failed the request: a client may well be answered a moment later
        # (another replica, a restarted upstream), so it always gets a Retry-After — the
        # upstream's own when it sent one.
        hint = UPSTREAM_RETRY_AFTER_S if retry_after is None else retry_after
        super().__init__(message, retry_after=hint, **fields)


class BadUpstreamError(UpstreamError):
    status = 502
    type = "server_error"
    default_code = "bad_upstream_response"


class UpstreamTimeoutError(UpstreamError):
    status = 504
    type = "timeout_error"
    default_code = "upstream_timeout"


@dataclass
class DeploymentState:
    """What the router and operators see of one deployment."""

    name: str
    model_id: str
    kind: str
    breaker: EngineBreaker
    max_concurrency: int | None = None
    # What the answers come from (a local model's path and revision, a remote's URL and
    # model): the response cache keys on it, so swapped weights never serve old answers.
    weights: str = ""
    in_flight: int = 0
    healthy: bool = True
    cooldown_until: float = 0.0
    last_error: str | None = None
    latency_s: Ewma = field(default_factory=lambda: Ewma(0.2))
    error_rate: Ewma = field(default_factory=lambda: Ewma(0.1))
    outcomes: dict[str, int] = field(default_factory=dict)

    _idle: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    def begin(self) -> None:
        """A request was handed to this deployment."""
        self.in_flight += 1
        self._idle.clear()

    def end(self, outcome: str, duration_s: float) -> None:
        """That request ended with ``outcome`` (``ok`` or a failure kind)."""
        self.in_flight -= 1
        if self.in_flight == 0:
            self._idle.set()
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        self.error_rate.add(0.0 if outcome in ("ok", "client_error") else 1.0)
        if outcome == "ok":
            self.latency_s.add(duration_s)

    async def drained(self) -> None:
        """Return once no request runs here."""
        if self.in_flight:
            await self._idle.wait()

    def available(self, now: float | None = None) -> bool:
        """Healthy, past any cooldown, and its breaker would let a request through."""
        now = time.monotonic() if now is None else now
        return self.healthy and now >= self.cooldown_until and self.breaker.retry_after() == 0

    @property
    def saturated(self) -> bool:
        return self.max_concurrency is not None and self.in_flight >= self.max_concurrency

    def cool_down(self, seconds: float, reason: str) -> None:
        """Send no new request here for ``seconds`` (an upstream's 429 Retry-After)."""
        self.cooldown_until = max(self.cooldown_until, time.monotonic() + seconds)
        self.last_error = reason

    def status(self) -> str:
        """``up``, ``degraded`` (breaker half-open, cooling down) or ``down``."""
        if not self.healthy or self.breaker.retry_after() > 0:
            return "down"
        if self.breaker.state != "closed" or time.monotonic() < self.cooldown_until:
            return "degraded"
        return "up"

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model": self.model_id,
            "kind": self.kind,
            "status": self.status(),
            "healthy": self.healthy,
            "in_flight": self.in_flight,
            "max_concurrency": self.max_concurrency,
            "breaker": self.breaker.stats().as_dict(),
            "error_rate": round(self.error_rate.value or 0.0, 4),
            "latency_s": round(self.latency_s.value, 4) if self.latency_s.value else None,
            "outcomes": dict(self.outcomes),
            "last_error": self.last_error,
        }


class Deployment(Protocol):
    """A place a model's jobs can run: an in-process engine or a remote server."""

    state: DeploymentState

    @property
    def ready(self) -> bool:
        """Loaded (local) or answering its health checks (remote)."""
        ...

    @property
    def ready_in_s(self) -> float | None:
        """Predicted seconds until it is ready (0 when it is; None: no prediction)."""
        ...

    @property
    def last_progress_at(self) -> float:
        """When it last produced output (``time.monotonic()``), whoever read it."""
        ...

    @property
    def resumable(self) -> bool:
        """Whether a stream cut elsewhere may continue here from token ids."""
        ...

    def generate(self, job: Job) -> AsyncIterator[EngineStep]:
        """The job's steps; closing the stream aborts it. Raises :class:`UpstreamError` or
        a client's :class:`GatewayError` (before or after the first step)."""
        ...

    async def embed(self, jobs: list[EmbeddingJob]) -> list[list[float]]:
        """One vector per job, in order (a model with ``task: embed``); errors as for
        :meth:`generate`. Cancelling it aborts every job still running."""
        ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def describe(self) -> dict[str, Any]: ...
