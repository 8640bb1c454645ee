"""``StartupForecast``: how long until a starting engine is ready, from measured start-ups.

While an engine (re)starts, clients are told ``Retry-After`` = the expected start-up time
minus the time this start has already taken, never below 1 s. A client that honours it —
the OpenAI SDK does, for hints up to 60 s — retries when the engine is back instead of
spending its retries early. The expectation is an EWMA of the start-ups measured in this
process, seeded with a first guess until one is measured.

The first start and restarts are kept apart: a first start on a new machine (a new pod)
also pays one-off work a restart does not repeat (vLLM inspects the model's class in a
fresh interpreter until its cache has it: ~30 s here against a ~4 s restart). Until a
restart is measured, a restart is expected to take the part of the first start that
repeats (the engine build, when the engine reports it), else the whole first start.
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
        self._first = Ewma(alpha)
        self._restarts = Ewma(alpha)
        self._repeatable: float | None = None  # of the first start: what a restart redoes
        self.last_s: float | None = None

    def record(
        self, seconds: float, *, restart: bool = False, repeatable_s: float | None = None
    ) -> None:
        """An engine became ready ``seconds`` after its start (``restart``: a replacement,
        or a standby, built after the first). ``repeatable_s``: the part of a first start
        a restart does again."""
        self.last_s = seconds
        if restart:
            self._restarts.add(seconds)
            return
        self._first.add(seconds)
        if repeatable_s is not None:
            self._repeatable = min(repeatable_s, seconds)

    def expected_s(self, restart: bool = False) -> float:
        first = self._first.value
        if restart:
            measured = self._restarts.value
            if measured is not None:
                return measured
            if self._repeatable is not None:
                return self._repeatable
        return self.first_guess_s if first is None else first

    def remaining_s(self, elapsed_s: float, restart: bool = False) -> float:
        """Seconds still to wait, ``elapsed_s`` into a start (or a restart); 1 s to 60 s."""
        left = self.expected_s(restart) - max(elapsed_s, 0.0)
        return min(MAX_RETRY_AFTER_S, max(MIN_RETRY_AFTER_S, left))
