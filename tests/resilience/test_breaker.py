"""EngineBreaker: opening, failing fast, the single half-open trial, exclusions, listeners."""

from __future__ import annotations

import asyncio
import logging

import pytest

from app.errors import (
    ClientDisconnectedError,
    EngineUnavailableError,
    GatewayError,
    GatewayTimeoutError,
    InvalidRequestError,
    ServiceUnavailableError,
)
from app.resilience.breaker import (
    CLOSED,
    HALF_OPEN,
    OPEN,
    BreakerTransition,
    EngineBreaker,
    is_client_error,
)
from app.resilience.errors import OverloadedError, QueueFullError, QueueTimeoutError
from app.resilience.settings import ResilienceSettings
from tests.resilience.manual_clock import ManualClock


def make(clock: ManualClock, transitions: list[BreakerTransition] | None = None) -> EngineBreaker:
    listeners = [transitions.append] if transitions is not None else []
    return EngineBreaker(fail_max=3, reset_timeout_s=30.0, clock=clock, listeners=listeners)


def fail(breaker: EngineBreaker, times: int, exc: BaseException | None = None) -> None:
    for _ in range(times):
        breaker.admit().record_failure(exc or RuntimeError("engine crashed"))


def tripped(
    clock: ManualClock, transitions: list[BreakerTransition] | None = None
) -> EngineBreaker:
    breaker = make(clock, transitions)
    fail(breaker, 3)
    return breaker


def test_opens_after_fail_max_consecutive_failures() -> None:
    """fail_max engine failures in a row open the breaker; fewer do not."""
    breaker = make(ManualClock())
    fail(breaker, 2)
    assert breaker.state == CLOSED and breaker.stats().failures == 2
    fail(breaker, 1)
    assert breaker.state == OPEN and breaker.stats().opened_total == 1


def test_a_success_resets_the_failure_count() -> None:
    """Failures must be consecutive: a success in between starts the count again."""
    breaker = make(ManualClock())
    fail(breaker, 2)
    breaker.admit().record_success()
    fail(breaker, 2)
    assert breaker.state == CLOSED


def test_open_breaker_fails_fast_with_retry_after_counting_down() -> None:
    """While open, admit() raises 503 engine_unavailable; retry_after is the time left."""
    clock = ManualClock()
    breaker = tripped(clock)
    clock.advance(12.0)
    with pytest.raises(EngineUnavailableError) as caught:
        breaker.admit()
    error = caught.value
    assert error.status == 503 and error.code == "engine_unavailable"
    assert error.retry_after == pytest.approx(18.0)
    clock.advance(17.5)
    assert breaker.retry_after() == pytest.approx(0.5)
    assert breaker.stats().rejected_total == 1


def test_half_open_lets_exactly_one_trial_through() -> None:
    """After the reset timeout one request is the trial; others fail fast meanwhile."""
    clock = ManualClock()
    breaker = tripped(clock)
    clock.advance(30.0)
    trial = breaker.admit()
    assert trial.trial and breaker.state == HALF_OPEN and breaker.stats().trial_in_flight
    with pytest.raises(EngineUnavailableError) as caught:
        breaker.admit()
    assert caught.value.retry_after == 1.0


def test_successful_trial_closes_the_breaker() -> None:
    """The trial's success closes the breaker and normal admission resumes."""
    clock = ManualClock()
    transitions: list[BreakerTransition] = []
    breaker = tripped(clock, transitions)
    clock.advance(30.0)
    breaker.admit().record_success()
    assert breaker.state == CLOSED and breaker.stats().failures == 0
    assert not breaker.admit().trial
    assert [(t.previous, t.current) for t in transitions] == [
        (CLOSED, OPEN),
        (OPEN, HALF_OPEN),
        (HALF_OPEN, CLOSED),
    ]


def test_failed_trial_reopens_for_a_full_reset_timeout() -> None:
    """The trial's failure re-opens the breaker, timed from the failure."""
    clock = ManualClock()
    breaker = tripped(clock)
    clock.advance(31.0)
    breaker.admit().record_failure(TimeoutError())
    assert breaker.state == OPEN and breaker.retry_after() == pytest.approx(30.0)
    assert breaker.stats().opened_total == 2


def test_allow_trial_lets_the_trial_go_early_on_evidence_newer_than_the_opening() -> None:
    """Evidence of health gathered since the breaker opened (a check begun after) ends the
    wait early; older evidence does not, nor does any for a closed breaker; the trial then
    decides as usual."""
    clock = ManualClock()
    breaker = EngineBreaker(fail_max=3, reset_timeout_s=30.0, clock=clock)
    assert not breaker.allow_trial(evidence_since=clock.now())  # closed: nothing to allow
    before = clock.now()
    clock.advance(1.0)
    breaker = tripped(clock)
    clock.advance(1.0)
    assert not breaker.allow_trial(evidence_since=before) and breaker.retry_after() == 29.0
    assert breaker.allow_trial(evidence_since=breaker.now()) and breaker.retry_after() == 0
    trial = breaker.admit()
    assert trial.trial and breaker.state == HALF_OPEN
    trial.record_failure(TimeoutError())
    assert breaker.state == OPEN and breaker.retry_after() == pytest.approx(30.0)


def test_a_request_can_wait_for_the_trial_in_flight() -> None:
    """While the half-open trial is out, ``trial_settled`` returns when it ends (at once
    when no trial is out, and after ``timeout_s`` at most)."""

    async def scenario() -> None:
        clock = ManualClock()
        breaker = tripped(clock)
        clock.advance(30.0)
        trial = breaker.admit()
        waiter = asyncio.create_task(breaker.trial_settled(5.0))
        await asyncio.sleep(0.01)
        assert not waiter.done()
        trial.record_success()
        await asyncio.wait_for(waiter, 1.0)
        assert breaker.state == CLOSED and not breaker.admit().trial
        await asyncio.wait_for(breaker.trial_settled(5.0), 0.1)  # none out: no wait

    asyncio.run(scenario())


def test_trial_ending_without_verdict_frees_the_trial_for_another_request() -> None:
    """A cancelled or client-error trial leaves the breaker half-open for the next request."""
    clock = ManualClock()
    breaker = tripped(clock)
    clock.advance(30.0)
    breaker.admit().record_failure(asyncio.CancelledError())
    second = breaker.admit()
    assert second.trial and breaker.state == HALF_OPEN
    second.release()
    assert breaker.admit().trial


@pytest.mark.parametrize(
    "exc",
    [
        asyncio.CancelledError(),
        GeneratorExit(),
        InvalidRequestError("bad"),
        ClientDisconnectedError("client went away"),
        QueueFullError("full"),
        QueueTimeoutError("waited"),
        OverloadedError("busy"),
        EngineUnavailableError("engine dead or restarting: the supervisor's to handle"),
    ],
)
def test_client_errors_and_cancellation_are_neutral(exc: BaseException) -> None:
    """Client errors, cancellation and admission refusals neither count nor reset the count."""
    breaker = make(ManualClock())
    fail(breaker, 2)
    fail(breaker, 5, exc)
    assert breaker.state == CLOSED and breaker.stats().failures == 2
    fail(breaker, 1)
    assert breaker.state == OPEN


@pytest.mark.parametrize(
    "exc",
    [
        RuntimeError("crash"),
        TimeoutError(),
        GatewayTimeoutError("slow"),
        ServiceUnavailableError("dead"),
        GatewayError("internal"),
    ],
)
def test_engine_failures_and_timeouts_count(exc: BaseException) -> None:
    """Engine exceptions, 5xx gateway errors and timeouts are failures."""
    assert not is_client_error(exc)
    breaker = make(ManualClock())
    fail(breaker, 3, exc)
    assert breaker.state == OPEN


def test_first_recorded_outcome_wins() -> None:
    """Recording twice on one permit has no further effect."""
    breaker = make(ManualClock())
    fail(breaker, 2)
    permit = breaker.admit()
    permit.record_success()
    permit.record_failure(RuntimeError())
    permit.record_failure(RuntimeError())
    assert breaker.stats().failures == 0


def test_outcomes_of_requests_admitted_before_a_transition_are_ignored() -> None:
    """Stale permits neither trip a recovered breaker nor close a half-open one."""
    clock = ManualClock()
    breaker = make(clock)
    stale = [breaker.admit() for _ in range(5)]
    fail(breaker, 3)
    stale[0].record_failure(RuntimeError())  # open: nothing to add
    clock.advance(30.0)
    trial = breaker.admit()
    stale[1].record_success()
    assert breaker.state == HALF_OPEN
    trial.record_success()
    for permit in stale[2:]:
        permit.record_failure(RuntimeError())
    assert breaker.state == CLOSED and breaker.stats().failures == 0


def test_permit_as_context_manager_records_the_block_outcome() -> None:
    """``with``/``async with`` on a permit records success, or the exception raised."""
    breaker = make(ManualClock())

    async def scenario() -> None:
        for _ in range(2):
            with pytest.raises(RuntimeError):
                async with breaker.admit():
                    raise RuntimeError("engine crashed")
        with breaker.admit():
            pass

    asyncio.run(scenario())
    assert breaker.stats().failures == 0
    with pytest.raises(RuntimeError), breaker.admit():
        raise RuntimeError("engine crashed")
    assert breaker.stats().failures == 1


def test_listeners_receive_transitions_and_their_errors_are_contained(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Every listener sees each transition; a failing listener is logged, not raised."""
    clock = ManualClock()
    seen: list[BreakerTransition] = []

    def broken(change: BreakerTransition) -> None:
        raise ValueError("metrics backend down")

    breaker = make(clock)
    breaker.add_listener(broken)
    breaker.add_listener(seen.append)
    with caplog.at_level(logging.INFO, logger="app.resilience.breaker"):
        fail(breaker, 3)
    assert [(t.name, t.current, t.failures, t.at) for t in seen] == [("engine", OPEN, 3, 1000.0)]
    messages = [r.getMessage() for r in caplog.records]
    assert "circuit breaker engine: closed -> open" in messages
    assert "circuit breaker listener failed" in messages
    assert any(r.levelno == logging.WARNING for r in caplog.records)


def test_stats_describe_the_breaker() -> None:
    """Stats carry state, counts, thresholds and the retry hint."""
    clock = ManualClock()
    breaker = tripped(clock)
    clock.advance(10.0)
    assert breaker.stats().as_dict() == {
        "state": OPEN,
        "failures": 3,
        "fail_max": 3,
        "reset_timeout_s": 30.0,
        "retry_after_s": 20.0,
        "trial_in_flight": False,
        "opened_total": 1,
        "rejected_total": 0,
    }


def test_from_settings_uses_the_configured_thresholds() -> None:
    """BREAKER_FAIL_MAX and BREAKER_RESET_TIMEOUT_S configure the breaker."""
    settings = ResilienceSettings(breaker_fail_max=2, breaker_reset_timeout_s=7)
    breaker = EngineBreaker.from_settings(settings, clock=ManualClock())
    fail(breaker, 2)
    assert breaker.state == OPEN and breaker.retry_after() == 7.0
