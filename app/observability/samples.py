"""Registry snapshots and the PromQL-like maths the in-process alerts need.

A :class:`Snapshot` is every sample of the wanted names at one instant; a :class:`Window`
compares two snapshots the way ``increase()``, ``histogram_quantile()`` and instant gauge
reads do in Prometheus, so the in-process alerts and ``alerts/gateway-rules.yml`` agree.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry

Labels = tuple[tuple[str, str], ...]
SeriesKey = tuple[str, Labels]
LabelMatch = Callable[[Mapping[str, str]], bool]


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Sample values (by name and sorted labels) read at time ``at``."""

    at: float
    values: Mapping[SeriesKey, float]


def take_snapshot(
    registries: Iterable[CollectorRegistry], wanted: Collection[str], at: float
) -> Snapshot:
    """Read the samples whose name is in ``wanted`` from every registry; the first registry
    that has a series wins (the gateway's own before the process-wide default)."""
    values: dict[SeriesKey, float] = {}
    for registry in registries:
        for family in registry.collect():
            for sample in family.samples:
                if sample.name in wanted:
                    key = (sample.name, tuple(sorted(sample.labels.items())))
                    values.setdefault(key, sample.value)
    return Snapshot(at, values)


def _series(snapshot: Snapshot, name: str, match: LabelMatch | None) -> dict[Labels, float]:
    return {
        labels: value
        for (sample_name, labels), value in snapshot.values.items()
        if sample_name == name and (match is None or match(dict(labels)))
    }


class Window:
    """Two snapshots, ``old`` (``None``: nothing older yet) and ``new``.

    Series missing from ``old`` were created since, so they count from 0 — counters start
    at 0 in this process — and a value below the old one is a reset (as in PromQL).
    """

    def __init__(self, old: Snapshot | None, new: Snapshot) -> None:
        self.old, self.new = old, new

    @property
    def seconds(self) -> float:
        return self.new.at - self.old.at if self.old is not None else 0.0

    def increase(self, name: str, match: LabelMatch | None = None) -> float | None:
        """Sum of the increases of the matching series; ``None`` when the window is empty."""
        increases = self._increases(name, match)
        return sum(increases.values()) if increases is not None else None

    def gauges(self, name: str, match: LabelMatch | None = None) -> list[float]:
        """Current values of the matching series."""
        return list(_series(self.new, name, match).values())

    def quantile(self, q: float, histogram: str, match: LabelMatch | None = None) -> float | None:
        """``histogram_quantile(q, sum by (le) (increase(<histogram>_bucket[window])))``.

        ``None`` when no observation fell in the window (PromQL: NaN, which never fires).
        """
        counts: dict[float, float] = {}
        for labels, increase in (self._increases(f"{histogram}_bucket", match) or {}).items():
            le = float(dict(labels)["le"])
            counts[le] = counts.get(le, 0.0) + increase
        return bucket_quantile(q, counts)

    def _increases(self, name: str, match: LabelMatch | None) -> dict[Labels, float] | None:
        if self.old is None:
            return None
        before = _series(self.old, name, match)
        return {
            labels: value - before.get(labels, 0.0) if value >= before.get(labels, 0.0) else value
            for labels, value in _series(self.new, name, match).items()
        }


def bucket_quantile(q: float, cumulative: Mapping[float, float]) -> float | None:
    """Prometheus's interpolation over cumulative bucket counts keyed by upper bound."""
    bounds = sorted(cumulative)
    if not bounds or bounds[-1] != math.inf or cumulative[math.inf] <= 0:
        return None
    rank = q * cumulative[math.inf]
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = cumulative[bound]
        if count >= rank:
            if bound == math.inf:
                return lower  # in the +Inf bucket: the highest finite bound, as PromQL does
            return lower + (bound - lower) * (rank - below) / max(count - below, 1e-12)
        lower, below = bound, count
    return lower
