"""Small estimators of the service rate, and the admission queue's stats snapshot.

Both estimators take the time as an argument (they hold no clock) so they are exact to
test and cost O(1) per event.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any


class Ewma:
    """Exponentially weighted moving average; ``value`` is ``None`` until the first sample."""

    def __init__(self, alpha: float = 0.2) -> None:
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        self.alpha = alpha
        self.value: float | None = None

    def add(self, sample: float) -> None:
        if self.value is None:
            self.value = sample
        else:
            self.value += self.alpha * (sample - self.value)


class DecayingRate:
    """Events per second, each event's weight decaying with time constant ``tau_s``.

    A steady stream of ``r`` events/s reads ``≈ r``; with no events the reading decays
    towards 0, so an engine that stops completing work shows it within a few ``tau_s``.
    """

    def __init__(self, tau_s: float = 10.0) -> None:
        if tau_s <= 0:
            raise ValueError(f"tau_s must be positive, got {tau_s}")
        self.tau_s = tau_s
        self._level = 0.0
        self._at: float | None = None

    def add(self, now: float) -> None:
        self._level = self.rate(now) + 1.0 / self.tau_s
        self._at = now

    def rate(self, now: float) -> float:
        if self._at is None:
            return 0.0
        return self._level * math.exp(-max(now - self._at, 0.0) / self.tau_s)


@dataclass(frozen=True, slots=True)
class AdmissionStats:
    """A snapshot of :class:`app.resilience.queue.PriorityAdmission`.

    ``hold_time_s`` is the EWMA of how long a slot is held; ``service_rate`` the slots freed
    per second when saturated (``limit / hold_time_s``); ``completion_rate`` the measured
    releases per second; ``estimated_wait_s`` the wait a request joining at the back of the
    queue is expected to have. Estimates are ``None`` until a slot has been released once.
    """

    limit: int
    in_flight: int
    max_queue: int
    queued: int
    depth_by_priority: dict[int, int]
    oldest_wait_s: float
    admitted_total: int
    rejected_total: int
    shed_total: int
    timed_out_total: int
    cancelled_total: int
    hold_time_s: float | None
    service_rate: float | None
    completion_rate: float
    estimated_wait_s: float | None
    accepting: bool

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: priority keys become strings."""
        data = asdict(self)
        data["depth_by_priority"] = {str(p): n for p, n in self.depth_by_priority.items()}
        return data
