"""Snapshot maths: increase() and histogram_quantile() as Prometheus computes them."""

from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram

from app.observability.samples import Snapshot, Window, bucket_quantile, take_snapshot

WANTED = {"c_total", "h_seconds_bucket"}


def snap(at: float, **values: float) -> Snapshot:
    return Snapshot(at, {("c_total", (("k", key),)): value for key, value in values.items()})


def test_increase_sums_series_and_counts_new_ones_from_zero() -> None:
    """Series present only in the new snapshot count from 0 (counters start at 0 here)."""
    window = Window(snap(0, a=5), snap(60, a=8, b=2))
    assert window.increase("c_total") == 5
    assert window.increase("c_total", lambda labels: labels["k"] == "b") == 2
    assert window.seconds == 60


def test_increase_treats_a_drop_as_a_reset() -> None:
    """A value below the old one means the counter restarted: the new value is the increase."""
    assert Window(snap(0, a=10), snap(60, a=3)).increase("c_total") == 3


def test_empty_window_has_no_increase() -> None:
    """With nothing older to compare against, rates are unknown (None), not zero."""
    assert Window(None, snap(0, a=1)).increase("c_total") is None


@pytest.mark.parametrize(
    ("q", "expected"),
    [(0.5, 0.5 + 0.5 * 25 / 75), (0.95, 0.5 + 0.5 * 70 / 75), (0.1, 0.2), (1.0, 1.0)],
)
def test_bucket_quantile_interpolates_like_promql(q: float, expected: float) -> None:
    """Linear interpolation inside the bucket; the +Inf bucket answers the top finite bound."""
    cumulative = {0.5: 25.0, 1.0: 100.0, math.inf: 100.0}
    assert bucket_quantile(q, cumulative) == pytest.approx(expected)
    assert bucket_quantile(0.99, {0.5: 10.0, 1.0: 50.0, math.inf: 100.0}) == 1.0


def test_bucket_quantile_without_observations_is_none() -> None:
    """No observations in the window: NaN in PromQL, None here; never fires."""
    assert bucket_quantile(0.95, {1.0: 0.0, math.inf: 0.0}) is None
    assert bucket_quantile(0.95, {}) is None


def test_snapshots_of_a_real_registry() -> None:
    """take_snapshot reads only the wanted sample names; quantile sums buckets over labels."""
    registry = CollectorRegistry()
    counter = Counter("c", "c", ["k"], registry=registry)
    histogram = Histogram("h_seconds", "h", ["k"], buckets=(1, 2, 4), registry=registry)
    old = take_snapshot([registry], WANTED, at=0)
    counter.labels("a").inc(3)
    for value, key in ((0.5, "a"), (1.5, "b"), (1.5, "a"), (3, "b")):
        histogram.labels(key).observe(value)
    new = take_snapshot([registry], WANTED, at=30)
    assert {name for name, _ in new.values} == WANTED
    window = Window(old, new)
    assert window.increase("c_total") == 3
    assert window.quantile(0.5, "h_seconds") == pytest.approx(1.5)
    assert window.quantile(0.5, "h_seconds", lambda labels: labels["k"] == "b") == 2.0
