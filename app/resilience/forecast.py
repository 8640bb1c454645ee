"""``StartupForecast``: how long until a starting engine is ready, from measured start-ups.

While an engine (re)starts, clients are told ``Retry-After`` = the expected start-up time
minus the time this start has already taken, never below 1 s. A client that honours it —
the OpenAI SDK does, for hints up to 60 s — retries when the engine is back instead of
spending its retries early. The expectation is an EWMA of the start-ups measured in this
process (the first start counts too), seeded with a first guess until one is measured.
"""

from __future__ import annotations

from app.resilience.stats import Ewma

MIN_RETRY_AFTER_S = 1.0
# The OpenAI SDK honours Retry-After up to 60 s (older releases; 120 s now) and gives up on
# (or ignores) longer ones: a longer start is told 60 s, and the client asks again then.
MAX_RETRY_AFTER_S = 60.0


class StartupForecast:
    """Expected start-up duration, and what is left of it."""

    def __init__(self, first_guess_s: float = 30.0, alpha: float = 0.5) -> None:
        if first_guess_s <= 0:
            raise ValueError(f"first_guess_s must be positive, got {first_guess_s}")
        self.first_guess_s = first_guess_s
        self._durations = Ewma(alpha)
        self.last_s: float | None = None

    def record(self, seconds: float) -> None:
        """An engine became ready ``seconds`` after its start (or its predecessor's death)."""
        self.last_s = seconds
        self._durations.add(seconds)

    @property
    def expected_s(self) -> float:
        value = self._durations.value
        return self.first_guess_s if value is None else value

    def remaining_s(self, elapsed_s: float) -> float:
        """Seconds still to wait, ``elapsed_s`` into a start; from 1 s to 60 s."""
        left = self.expected_s - max(elapsed_s, 0.0)
        return min(MAX_RETRY_AFTER_S, max(MIN_RETRY_AFTER_S, left))
