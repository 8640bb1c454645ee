"""EngineSupervisor's lifecycle on a fake engine at the boundary (start, death, stop): the
restart, the standby swap, Retry-After from the measured start-up, bounded stop.

The fake stands in for vLLM only (the GPU/CPU engine); every behaviour here also has a
real-engine test in tests/e2e/test_engine_recovery.py.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from app.engine.supervisor import EngineSupervisor
from app.errors import EngineUnavailableError
from app.resilience.forecast import StartupForecast

_ids = itertools.count(1)


@dataclass
class LifecycleEngine:
    """Starts in ``start_s``; dies when told; counts its stops."""

    start_s: float = 0.05
    number: int = field(default_factory=lambda: next(_ids))
    is_ready: bool = False
    is_dead: bool = False
    stops: int = 0
    failed: list[str] = field(default_factory=list)
    last_progress_at: float = 0.0
    build_s: float | None = None  # what EngineManager reports: the part a restart repeats

    async def start(self) -> None:
        await asyncio.sleep(self.start_s)
        self.is_ready = True

    async def stop(self) -> None:
        self.stops += 1
        self.is_ready = False

    def die(self) -> None:
        self.is_ready, self.is_dead = False, True

    def fail_all(self, reason: str) -> None:
        self.failed.append(reason)

    def num_unfinished_requests(self) -> int:
        return 0

    @property
    def core_pids(self) -> list[int]:
        return [self.number]


@dataclass
class Factory:
    """Builds the engines (each taking ``start_s`` to start) and keeps them in ``built``."""

    start_s: float = 0.05
    built: list[LifecycleEngine] = field(default_factory=list)

    def __call__(self) -> LifecycleEngine:
        self.built.append(LifecycleEngine(self.start_s))
        return self.built[-1]


def _supervisor(standby: bool = False) -> tuple[EngineSupervisor, Factory]:
    factory = Factory()

    supervisor = EngineSupervisor(
        factory, 60, standby=standby, check_interval_s=0.01, forecast=StartupForecast(30)
    )
    return supervisor, factory


async def _until(check: Callable[[], bool], within_s: float = 5) -> None:
    """Poll ``check`` (the supervisor has no event to wait on) until true or ``within_s``."""
    async with asyncio.timeout(within_s):
        while not check():  # noqa: ASYNC110
            await asyncio.sleep(0.005)


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(scenario())  # type: ignore[arg-type]


def test_a_dead_engine_is_replaced_and_the_start_up_is_measured() -> None:
    """Death: in-flight work is failed, a new engine started, the old one stopped; each
    start's duration feeds the forecast."""

    async def scenario() -> None:
        supervisor, factory = _supervisor()
        built = factory.built
        await supervisor.start()
        assert supervisor.is_ready and supervisor.ready_in_s == 0
        assert supervisor.forecast.last_s == pytest.approx(0.05, abs=0.04)
        built[0].die()
        await _until(lambda: supervisor.restarts == 1 and supervisor.is_ready)
        assert built[0].failed == ["engine dead"] and built[0].stops == 1
        assert supervisor.core_pids == [built[1].number]
        await supervisor.stop()
        assert built[1].stops == 1

    run(scenario)


def test_retry_after_while_restarting_is_the_expected_start_minus_time_spent() -> None:
    """While a new engine starts, 503s carry the forecast's remaining time (>= 1 s)."""

    async def scenario() -> None:
        supervisor, factory = _supervisor()
        built = factory.built
        await supervisor.start()
        supervisor.forecast = StartupForecast(first_guess_s=30)  # as if starts took 30 s
        factory.start_s = 5
        built[0].die()
        assert 29 < supervisor.ready_in_s <= 30  # dead, not yet noticed: a whole start
        await _until(lambda: supervisor.restarts == 0 and len(built) == 2)
        await asyncio.sleep(0.2)
        assert 28.5 < supervisor.ready_in_s < 29.9
        with pytest.raises(EngineUnavailableError) as refused:
            supervisor.generate([1], None, "r1")  # type: ignore[arg-type]
        assert refused.value.retry_after == pytest.approx(supervisor.ready_in_s, abs=0.1)
        await supervisor.stop()

    run(scenario)


def test_a_restart_is_forecast_from_what_restarts_repeat_then_from_restarts() -> None:
    """The first start's one-off work (a new machine's model inspection) does not inflate
    a restart's Retry-After: the engine's build time does, until a restart is measured."""

    async def scenario() -> None:
        supervisor, factory = _supervisor()
        built = factory.built
        factory.start_s = 0.2
        await supervisor.start()
        built[0].build_s = 0.02  # reported after its start, as EngineManager does
        supervisor.forecast = StartupForecast(first_guess_s=30)
        supervisor.forecast.record(0.2, repeatable_s=built[0].build_s)
        assert supervisor.forecast.expected_s(restart=True) == pytest.approx(0.02)
        factory.start_s = 0.05
        built[0].die()
        await _until(lambda: supervisor.restarts == 1 and supervisor.is_ready)
        assert supervisor.forecast.expected_s(restart=True) == pytest.approx(0.05, abs=0.04)
        assert supervisor.forecast.expected_s() == pytest.approx(0.2)
        await supervisor.stop()

    run(scenario)


def test_the_standby_takes_over_at_once_and_a_new_one_is_built() -> None:
    """STANDBY_ENGINE: the ready spare becomes the active engine with no start to wait for,
    then a new spare is built in the background."""

    async def scenario() -> None:
        supervisor, factory = _supervisor(standby=True)
        built = factory.built
        await supervisor.start()
        await _until(lambda: supervisor.standby_ready is True)
        active, spare = built
        factory.start_s = 1.0  # any new start is now slow
        active.die()
        assert supervisor.ready_in_s == 1.0  # the spare is ready: retry in a second
        await _until(lambda: supervisor.restarts == 1, within_s=0.5)
        assert supervisor.is_ready and supervisor.core_pids == [spare.number]
        assert supervisor.standby_ready is False  # being rebuilt
        await _until(lambda: len(built) == 3)
        await supervisor.stop()
        assert active.stops == 1 and spare.stops == 1 and built[2].stops >= 1

    run(scenario)


def test_a_dead_standby_is_rebuilt() -> None:
    """A spare that dies while idle is replaced before it is needed."""

    async def scenario() -> None:
        supervisor, factory = _supervisor(standby=True)
        built = factory.built
        await supervisor.start()
        await _until(lambda: supervisor.standby_ready is True)
        built[1].die()
        await _until(lambda: len(built) == 3 and supervisor.standby_ready is True)
        assert built[1].stops == 1 and supervisor.restarts == 0
        await supervisor.stop()

    run(scenario)


def test_stop_while_restarting_ends_at_once() -> None:
    """SIGTERM mid-restart: the restart is cancelled, nothing waits for the slow start."""

    async def scenario() -> None:
        supervisor, factory = _supervisor()
        built = factory.built
        await supervisor.start()
        factory.start_s = 60
        built[0].die()
        await _until(lambda: len(built) == 2)
        async with asyncio.timeout(1):
            await supervisor.stop()
        assert all(engine.stops >= 1 for engine in built)

    run(scenario)
