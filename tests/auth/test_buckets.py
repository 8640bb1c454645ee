"""Token-bucket maths: admission bounds, refunds, exact waits, clocks that step back."""

from __future__ import annotations

import math

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from app.auth.buckets import (
    EPSILON,
    BucketState,
    Levels,
    Limits,
    TokenBucket,
    retry_after,
    time_to_full,
)

capacities = st.integers(min_value=1, max_value=100_000)
rates = st.floats(min_value=0.01, max_value=10_000, allow_nan=False, allow_infinity=False)
gaps = st.floats(min_value=0, max_value=120, allow_nan=False, allow_infinity=False)
fractions = st.floats(min_value=0, max_value=2, allow_nan=False, allow_infinity=False)
PROPERTY = settings(max_examples=200, deadline=None)


@PROPERTY
@given(capacities, rates, st.lists(st.tuples(gaps, fractions), max_size=60))
def test_never_admits_more_than_capacity_plus_refill(
    capacity: int, rate: float, steps: list[tuple[float, float]]
) -> None:
    """Whatever is asked when, admitted tokens never exceed capacity + rate * elapsed."""
    bucket = TokenBucket(capacity, rate)
    state, now, admitted = bucket.full(0.0), 0.0, 0.0
    for gap, fraction in steps:
        now += gap
        cost = math.ceil(fraction * capacity)
        state, wait = bucket.try_take(state, cost, now)
        admitted += cost if wait == 0 else 0
        assert admitted <= capacity + rate * now + EPSILON * len(steps)


@PROPERTY
@given(capacities, rates, st.lists(st.tuples(gaps, fractions, st.booleans()), max_size=60))
def test_refunds_never_lift_the_level_above_capacity(
    capacity: int, rate: float, steps: list[tuple[float, float, bool]]
) -> None:
    """Interleaved takes and give-backs keep the level within [0, capacity]."""
    bucket = TokenBucket(capacity, rate)
    state, now = bucket.full(0.0), 0.0
    for gap, fraction, give in steps:
        now += gap
        amount = math.ceil(fraction * capacity)
        if give:
            state = bucket.give_back(state, amount, now)
        else:
            state, _ = bucket.try_take(state, amount, now)
        assert 0.0 <= state.level <= capacity


@PROPERTY
@given(
    capacities,
    rates,
    st.floats(min_value=0, max_value=1, allow_nan=False),
    st.floats(min_value=0, max_value=1, allow_nan=False),
    st.floats(min_value=0, max_value=10_000, allow_nan=False),
)
def test_retry_after_is_exact(
    capacity: int, rate: float, level_share: float, cost_share: float, now: float
) -> None:
    """Waiting exactly the returned time admits the same cost; waiting 0.1% less does not."""
    bucket = TokenBucket(capacity, rate)
    cost = max(1, math.ceil(cost_share * capacity))
    state = BucketState(level_share * capacity, now)
    _, wait = bucket.try_take(state, cost, now)
    assume(wait > 0)
    _, wait_then = bucket.try_take(state, cost, now + wait)
    assert wait_then == 0
    if cost - state.level >= 1e-2:  # a deficit the 0.1% shortfall is sure to show
        _, early = bucket.try_take(state, cost, now + wait * 0.999)
        assert early > 0


def test_cost_above_capacity_never_fits() -> None:
    """A cost larger than the bucket waits forever, even from a full bucket."""
    bucket = TokenBucket(10, 1.0)
    state, wait = bucket.try_take(bucket.full(0.0), 11, 0.0)
    assert wait == math.inf and state.level == 10


def test_refused_take_leaves_the_level_untouched() -> None:
    """A take that does not fit takes nothing; the wait is the exact deficit over the rate."""
    bucket = TokenBucket(10, 2.0)
    state, _ = bucket.try_take(bucket.full(0.0), 8, 0.0)
    state, wait = bucket.try_take(state, 5, 0.0)
    assert state.level == pytest.approx(2) and wait == pytest.approx(1.5)


def test_clock_stepping_back_counts_as_no_time() -> None:
    """An earlier ``now`` neither refills nor rewinds; refill resumes from the later time."""
    bucket = TokenBucket(10, 1.0)
    state = BucketState(0.0, 100.0)
    back = bucket.at(state, 90.0)
    assert back == BucketState(0.0, 100.0)
    assert bucket.at(back, 103.0).level == pytest.approx(3.0)


def test_give_back_caps_at_capacity() -> None:
    """Returning more than was taken fills the bucket, no further."""
    bucket = TokenBucket(10, 1.0)
    state, _ = bucket.try_take(bucket.full(0.0), 4, 0.0)
    assert bucket.give_back(state, 100, 0.0).level == 10


def test_invalid_bucket_is_refused() -> None:
    """A bucket with no capacity or no refill would never admit: it cannot be built."""
    with pytest.raises(ValueError):
        TokenBucket(0, 1.0)
    with pytest.raises(ValueError):
        TokenBucket(1, 0.0)


def test_limits_build_per_minute_buckets() -> None:
    """RPM and TPM refill per minute; burst sizes the request bucket and defaults to RPM."""
    assert Limits(rpm=60, tpm=600).requests == TokenBucket(60, 1.0)
    assert Limits(rpm=60, tpm=600).tokens == TokenBucket(600, 10.0)
    assert Limits(rpm=60, tpm=600, burst=5).requests == TokenBucket(5, 1.0)


def test_retry_after_waits_for_the_slower_bucket() -> None:
    """One request fits when both buckets fit: the wait is the longer of the two."""
    limits = Limits(rpm=60, tpm=600)
    assert retry_after(limits, Levels(0.0, 600.0), 100) == pytest.approx(1.0)
    assert retry_after(limits, Levels(1.0, 0.0), 100) == pytest.approx(10.0)
    assert retry_after(limits, Levels(60.0, 600.0), 601) == math.inf


def test_time_to_full_is_the_slower_refill() -> None:
    """A key's state matters until both buckets are full again."""
    limits = Limits(rpm=60, tpm=600)
    assert time_to_full(limits, Levels(58.0, 500.0)) == pytest.approx(10.0)
    assert time_to_full(limits, Levels.full(limits)) == 0
