"""A circuit breaker around the engine, built on pybreaker's state machine.

pybreaker counts failures, applies exclusions and notifies listeners; this module adds
what an asyncio gateway needs on top, because pybreaker's ``call_async`` needs Tornado
and its reset timer reads the wall clock:

* the outcome is recorded explicitly, when the work really ends (for a stream: at its
  end), through a :class:`BreakerPermit` from :meth:`EngineBreaker.admit`;
* time comes from an injected clock, so ``retry_after`` counts down testably;
* half-open lets exactly **one** trial through; the others fail fast.

States: ``closed`` → (``fail_max`` failures in a row) → ``open``: every request fails fast
with :class:`EngineUnavailableError` (503, ``retry_after`` = time left) → (after
``reset_timeout_s``, on the next request) → ``half-open``: that request is the trial; its
success closes the breaker, its failure re-opens it.

What counts as a failure: anything :func:`is_client_error` rejects, e.g. engine
exceptions, ``GatewayError`` with status >= 500, timeouts. Client errors, cancellation and
admission refusals are *neutral*: they neither count nor reset the count (pybreaker would
count them as successes, letting a trickle of bad requests hide a failing engine).
Outcomes of requests admitted before the latest transition are ignored as stale.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

import pybreaker

from app.errors import EngineUnavailableError, GatewayError
from app.resilience.clock import Clock, LoopClock
from app.resilience.errors import (
    OverloadedError,
    QueueFullError,
    QueueTimeoutError,
    ShuttingDownError,
)
from app.resilience.settings import ResilienceSettings

logger = logging.getLogger(__name__)

CLOSED, OPEN, HALF_OPEN = pybreaker.STATE_CLOSED, pybreaker.STATE_OPEN, pybreaker.STATE_HALF_OPEN
_ADMISSION_ERRORS = (QueueFullError, QueueTimeoutError, OverloadedError, ShuttingDownError)


def is_client_error(exc: BaseException) -> bool:
    """True for outcomes that say nothing about the engine's health.

    So is a 504 from the client's own short ``timeout``, and ``EngineUnavailableError``: a
    dead or restarting engine is the supervisor's to handle (it already fails fast), and
    counting it would keep the breaker open for a reset timeout after the engine is back.
    """
    neutral = (asyncio.CancelledError, GeneratorExit, EngineUnavailableError, *_ADMISSION_ERRORS)
    if isinstance(exc, neutral) or getattr(exc, "client_chosen", False):
        return True
    return isinstance(exc, GatewayError) and exc.status < 500


@dataclass(frozen=True, slots=True)
class BreakerTransition:
    """One state change, as listeners receive it."""

    name: str
    previous: str
    current: str
    failures: int
    at: float


TransitionListener = Callable[[BreakerTransition], None]


@dataclass(frozen=True, slots=True)
class BreakerStats:
    state: str
    failures: int
    fail_max: int
    reset_timeout_s: float
    retry_after_s: float
    trial_in_flight: bool
    opened_total: int
    rejected_total: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class _RecordedFailure(Exception):
    """Carries a failure into pybreaker without touching the original's traceback."""


class BreakerPermit:
    """One admitted engine call. The first outcome recorded wins; later ones are ignored.

    Use it as a (sync or async) context manager for the simple case: leaving the block
    normally records success, leaving it with an exception records that exception.
    A stream that owns the permit calls :meth:`record_success` / :meth:`record_failure`
    at its end, and :meth:`release` in ``finally`` when no outcome was recorded.
    """

    __slots__ = ("_breaker", "_done", "epoch", "trial")

    def __init__(self, breaker: EngineBreaker, epoch: int, trial: bool) -> None:
        self._breaker, self.epoch, self.trial = breaker, epoch, trial
        self._done = False

    def record_success(self) -> None:
        self._settle(None)

    def record_failure(self, exc: BaseException) -> None:
        """Count ``exc`` as an engine failure unless :func:`is_client_error` excludes it."""
        self._settle(exc)

    def release(self) -> None:
        """End without a verdict (e.g. abandoned); frees the half-open trial for another."""
        self._settle(None, verdict=False)

    def _settle(self, exc: BaseException | None, verdict: bool = True) -> None:
        if not self._done:
            self._done = True
            self._breaker._settle(self, exc, verdict)

    def __enter__(self) -> BreakerPermit:
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        self._settle(exc)

    async def __aenter__(self) -> BreakerPermit:
        return self

    async def __aexit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        self._settle(exc)


def _succeed() -> None:
    return None


def _fail() -> None:
    raise _RecordedFailure


class EngineBreaker:
    """Fails fast while the engine is failing; see the module docstring for the rules.

    Not thread-safe: use it from the one event loop that serves requests.
    """

    def __init__(
        self,
        fail_max: int = 5,
        reset_timeout_s: float = 30.0,
        *,
        clock: Clock | None = None,
        listeners: Iterable[TransitionListener] = (),
        exclude: Callable[[BaseException], bool] = is_client_error,
        trial_retry_after_s: float = 1.0,
        name: str = "engine",
    ) -> None:
        self._clock = clock or LoopClock()
        self._exclude = exclude
        self._listeners = list(listeners)
        self._trial_retry_after_s = trial_retry_after_s
        self._epoch = 0
        self._opened_at = 0.0
        self._trial_out = False
        self._trial_done = asyncio.Event()  # set when the trial in flight ends
        self._opened_total = 0
        self._rejected_total = 0
        self._breaker = pybreaker.CircuitBreaker(
            fail_max=fail_max,
            reset_timeout=reset_timeout_s,
            listeners=[_Relay(self)],
            name=name,
            throw_new_error_on_trip=False,
        )

    @classmethod
    def from_settings(
        cls,
        settings: ResilienceSettings,
        clock: Clock | None = None,
        listeners: Iterable[TransitionListener] = (),
        name: str = "engine",
    ) -> EngineBreaker:
        return cls(
            settings.breaker_fail_max,
            settings.breaker_reset_timeout_s,
            clock=clock,
            listeners=listeners,
            name=name,
        )

    def add_listener(self, listener: TransitionListener) -> None:
        """Call ``listener`` on every transition; its exceptions are logged, not raised."""
        self._listeners.append(listener)

    @property
    def state(self) -> str:
        """``closed``, ``open`` or ``half-open`` (``open`` until a request starts the trial)."""
        return self._breaker.current_state

    def retry_after(self) -> float:
        """Seconds until an open breaker lets a trial through; 0 when it would now."""
        if self.state != OPEN:
            return 0.0
        return max(self._opened_at + self._breaker.reset_timeout - self._clock.now(), 0.0)

    def admit(self) -> BreakerPermit:
        """A permit to call the engine, or :class:`EngineUnavailableError` (503) to fail fast."""
        if self.state == OPEN:
            left = self.retry_after()
            if left > 0:
                raise self._unavailable(left)
            self._breaker.half_open()
        if self.state == HALF_OPEN:
            if self._trial_out:
                raise self._unavailable(self._trial_retry_after_s)
            self._trial_out = True
            self._trial_done = asyncio.Event()
            return BreakerPermit(self, self._epoch, trial=True)
        return BreakerPermit(self, self._epoch, trial=False)

    def now(self) -> float:
        """The time on this breaker's clock (for :meth:`allow_trial`'s evidence)."""
        return self._clock.now()

    def allow_trial(self, evidence_since: float) -> bool:
        """Let the next request be the half-open trial now instead of after the reset
        timeout, if the breaker opened before ``evidence_since``: for a caller with newer
        evidence that the engine answers again (a remote deployment's health check that
        began then and passed). True if it did."""
        if self.retry_after() == 0 or self._opened_at > evidence_since:
            return False
        self._opened_at = self._clock.now() - self._breaker.reset_timeout
        logger.info("circuit breaker %s: a trial request may go now", self._breaker.name)
        return True

    async def trial_settled(self, timeout_s: float) -> None:
        """Wait (at most ``timeout_s``) for the half-open trial in flight to end."""
        if self._trial_out and timeout_s > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._trial_done.wait(), timeout_s)

    def stats(self) -> BreakerStats:
        return BreakerStats(
            state=self.state,
            failures=self._breaker.fail_counter,
            fail_max=self._breaker.fail_max,
            reset_timeout_s=self._breaker.reset_timeout,
            retry_after_s=self.retry_after(),
            trial_in_flight=self._trial_out,
            opened_total=self._opened_total,
            rejected_total=self._rejected_total,
        )

    def health(self) -> dict[str, Any]:
        """A ``/health/detailed`` component: ok closed, degraded half-open, down open."""
        status = {CLOSED: "ok", HALF_OPEN: "degraded"}.get(self.state, "down")
        return {**self.stats().as_dict(), "status": status}

    def _unavailable(self, retry_after: float) -> EngineUnavailableError:
        self._rejected_total += 1
        return EngineUnavailableError(
            "The inference engine is failing; requests are refused until it recovers.",
            retry_after=retry_after,
        )

    def _settle(self, permit: BreakerPermit, exc: BaseException | None, verdict: bool) -> None:
        if permit.epoch != self._epoch:
            return  # admitted before the latest transition: says nothing about this state
        if permit.trial:
            self._trial_out = False
            self._trial_done.set()
        if not verdict or (exc is not None and self._exclude(exc)):
            return
        if exc is None:
            self._breaker.call(_succeed)
        else:
            with contextlib.suppress(_RecordedFailure):
                self._breaker.call(_fail)

    def _on_transition(self, previous: str, current: str) -> None:
        self._epoch += 1
        if current != HALF_OPEN:
            self._trial_done.set()  # whatever trial was out, its state has been decided
        if current == OPEN:
            self._opened_at = self._clock.now()
            self._opened_total += 1
        change = BreakerTransition(
            self._breaker.name or "breaker",
            previous,
            current,
            self._breaker.fail_counter,
            self._clock.now(),
        )
        level = logging.WARNING if current == OPEN else logging.INFO
        logger.log(level, "circuit breaker %s: %s -> %s", change.name, previous, current)
        for listener in self._listeners:
            try:
                listener(change)
            except Exception:
                logger.exception("circuit breaker listener failed")


class _Relay(pybreaker.CircuitBreakerListener):
    """Forwards pybreaker's state changes to the owning :class:`EngineBreaker`."""

    def __init__(self, owner: EngineBreaker) -> None:
        self._owner = owner

    def state_change(
        self,
        cb: pybreaker.CircuitBreaker,
        old_state: pybreaker.CircuitBreakerState | None,
        new_state: pybreaker.CircuitBreakerState,
    ) -> None:
        previous = old_state.name if old_state is not None else CLOSED
        self._owner._on_transition(previous, new_state.name)
