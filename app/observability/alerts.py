"""``AlertEvaluator``: the gateway's alert rules, evaluated in-process from its own metrics.

Pure: it reads registry samples and an injected clock, nothing else. Each
:meth:`AlertEvaluator.evaluate` takes a snapshot of the samples the rules read, compares it
with the oldest snapshot inside each rule's window (like ``increase()`` over ``[5m]``),
and moves each rule through inactive → pending → firing the way Prometheus does with
``for``. Transitions to firing and back land in a bounded history.

Call ``evaluate()`` every ``ALERT_EVAL_INTERVAL_S`` (a lifespan task) so windows and
``for`` durations are measured between evaluations; ``GET /alerts`` evaluates again and
reports. Snapshots are kept at most every half interval, so polling ``/alerts`` in a tight
loop does not grow memory.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from prometheus_client import CollectorRegistry

from app.observability.alert_rules import DEFAULT_RULES, AlertRule, Reading
from app.observability.metrics import GatewayMetrics
from app.observability.samples import Snapshot, Window, take_snapshot
from app.observability.settings import ObservabilitySettings

Clock = Callable[[], float]
RUNBOOKS = "docs/runbooks.md"

log = logging.getLogger(__name__)


@dataclass(slots=True)
class AlertState:
    """One rule's state: ``active_since`` is when its condition became true."""

    name: str
    severity: str
    summary: str
    state: str  # "pending" or "firing"
    active_since: float
    value: float | None
    threshold: float
    runbook: str


@dataclass(frozen=True, slots=True)
class AlertEvent:
    name: str
    state: str  # "firing" or "resolved"
    at: float
    value: float | None


class AlertEvaluator:
    """See the module docstring. ``clock`` returns seconds (wall time, shown in reports)."""

    def __init__(
        self,
        registries: Sequence[CollectorRegistry],
        settings: ObservabilitySettings,
        clock: Clock = time.time,
        rules: Sequence[AlertRule] = DEFAULT_RULES,
        before: Callable[[], None] | None = None,
    ) -> None:
        """``before`` runs ahead of each snapshot (``GatewayMetrics.refresh``)."""
        self.registries = list(dict.fromkeys(registries))
        self.before = before
        self.settings, self.clock, self.rules = settings, clock, tuple(rules)
        self._wanted = frozenset(name for rule in self.rules for name in rule.reads)
        self._longest = max((rule.window_s for rule in self.rules), default=0.0)
        self._snapshots: deque[Snapshot] = deque()
        self._active: dict[str, AlertState] = {}
        self.history: deque[AlertEvent] = deque(maxlen=settings.alert_history_size)

    @classmethod
    def for_metrics(
        cls, metrics: GatewayMetrics, settings: ObservabilitySettings, clock: Clock = time.time
    ) -> AlertEvaluator:
        """Rules over the gateway's registry (its ``vllm:*`` too: see EngineMetrics)."""
        return cls([metrics.registry], settings, clock, before=metrics.refresh)

    async def run(self) -> None:
        """Evaluate every ``ALERT_EVAL_INTERVAL_S`` until cancelled (a lifespan task)."""
        while True:
            self.evaluate()
            await asyncio.sleep(self.settings.alert_eval_interval_s)

    def evaluate(self) -> list[AlertState]:
        """Evaluate every rule now; returns the firing alerts."""
        if self.before is not None:
            self.before()
        now = self.clock()
        current = take_snapshot(self.registries, self._wanted, now)
        for rule in self.rules:
            self._apply(rule, rule.check(self._window(rule, current), self.settings), now)
        self._keep(current)
        return self.firing()

    @property
    def retained_snapshots(self) -> int:
        """How many snapshots the windows hold now (bounded by the longest window)."""
        return len(self._snapshots)

    def firing(self) -> list[AlertState]:
        return [alert for alert in self._active.values() if alert.state == "firing"]

    def report(self) -> dict[str, Any]:
        """Evaluate, then the JSON body of ``GET /alerts``: firing, pending, recent history."""
        self.evaluate()
        return {
            "evaluated_at": self.clock(),
            "firing": [asdict(a) for a in self._active.values() if a.state == "firing"],
            "pending": [asdict(a) for a in self._active.values() if a.state == "pending"],
            "history": [asdict(event) for event in reversed(self.history)],
        }

    def _window(self, rule: AlertRule, current: Snapshot) -> Window:
        if rule.window_s <= 0:
            return Window(None, current)
        start = current.at - rule.window_s
        # A snapshot from this very instant would make a zero-length window: no rate at all.
        oldest = next((s for s in self._snapshots if start <= s.at < current.at), None)
        return Window(oldest, current)

    def _apply(self, rule: AlertRule, reading: Reading, now: float) -> None:
        active = self._active.get(rule.name)
        if not reading.firing:
            if active is not None:
                del self._active[rule.name]
                if active.state == "firing":
                    self._record(AlertEvent(rule.name, "resolved", now, reading.value))
            return
        if active is None:
            runbook = f"{RUNBOOKS}#{rule.name.lower()}"
            active = AlertState(
                rule.name,
                rule.severity,
                rule.summary,
                "pending",
                now,
                None,
                reading.threshold,
                runbook,
            )
            self._active[rule.name] = active
        active.value = reading.value
        if active.state == "pending" and now - active.active_since >= rule.for_s:
            active.state = "firing"
            self._record(AlertEvent(rule.name, "firing", now, reading.value))

    def _record(self, event: AlertEvent) -> None:
        self.history.append(event)
        level = logging.WARNING if event.state == "firing" else logging.INFO
        log.log(level, "alert %s", event.state, extra={"alert": event.name, "value": event.value})

    def _keep(self, snapshot: Snapshot) -> None:
        """Store ``snapshot`` if the last kept one is half an interval old; drop stale ones."""
        spacing = self.settings.alert_eval_interval_s / 2
        if not self._snapshots or snapshot.at - self._snapshots[-1].at >= spacing:
            self._snapshots.append(snapshot)
        horizon = snapshot.at - self._longest - self.settings.alert_eval_interval_s
        while self._snapshots and self._snapshots[0].at < horizon:
            self._snapshots.popleft()
