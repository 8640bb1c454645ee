"""Test-only fault injection through the ``EngineClient`` seam.

``FAULT_INJECTION`` (JSON, e.g. ``{"fail_requests": 5}``) wraps the real engine in a
:class:`FaultInjectingEngine` that fails or stalls requests as planned while the engine
itself keeps running. It is refused unless ``ALLOW_FAULT_INJECTION=true``, so a production
deployment cannot switch it on by accident.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from pydantic import BaseModel, Field

from app.engine.protocol import EngineStep, SamplingOptions
from app.errors import EngineUnavailableError, GatewayError


class InjectedEngineError(GatewayError):
    """What an injected failure raises: a 500 engine error, as a real engine bug would."""

    default_code = "engine_error"


class FaultPlan(BaseModel):
    """What to break. Counters run down as requests arrive."""

    fail_requests: int = Field(default=0, ge=0, description="The next N requests fail.")
    fail_after_steps: int | None = Field(
        default=None, ge=0, description="Those failures happen after this many steps."
    )
    stall_requests: int = Field(default=0, ge=0, description="The next N requests stall.")
    stall_s: float = Field(default=3600.0, gt=0, description="How long a stall lasts.")
    die_requests: int = Field(
        default=0, ge=0, description="The next N requests see the engine die (503)."
    )
    die_after_steps: int = Field(default=0, ge=0, description="... after this many steps.")


class FaultInjectingEngine:
    """Delegates to ``inner``; fails or stalls requests as the plan says."""

    def __init__(self, inner: Any, plan: FaultPlan) -> None:
        self.inner = inner
        self.plan = plan
        self._stalled = 0
        self._failed_all: asyncio.Event | None = None

    def __getattr__(self, name: str) -> Any:
        # Lifecycle, death signals and anything else go straight to the real engine.
        return getattr(self.inner, name)

    def num_unfinished_requests(self) -> int:
        # A stalled request is work the engine has not finished, as a hung engine would show.
        return int(self.inner.num_unfinished_requests()) + self._stalled

    def fail_all(self, reason: str) -> None:
        self._event().set()
        self.inner.fail_all(reason)

    def _event(self) -> asyncio.Event:
        if self._failed_all is None:
            self._failed_all = asyncio.Event()
        return self._failed_all

    async def _stall(self) -> None:
        self._stalled += 1
        try:
            await asyncio.wait_for(self._event().wait(), self.plan.stall_s)
        except TimeoutError:
            return
        finally:
            self._stalled -= 1
        raise EngineUnavailableError("The engine stalled and is restarting.", retry_after=10)

    async def generate(
        self,
        prompt_token_ids: list[int],
        options: SamplingOptions,
        request_id: str,
        priority: int = 0,
    ) -> AsyncIterator[EngineStep]:
        fail, stall, die = self._draw()
        stream = self.inner.generate(prompt_token_ids, options, request_id, priority)
        try:
            steps = 0
            if fail and not self.plan.fail_after_steps:
                raise InjectedEngineError("Injected engine failure.")
            async for step in stream:
                if stall:
                    await self._stall()
                if die and steps >= self.plan.die_after_steps:
                    # As a killed engine core: the request fails as EngineDeadError would.
                    raise EngineUnavailableError(
                        "The engine has stopped (injected).", retry_after=5
                    )
                yield step
                steps += 1
                if fail and steps >= (self.plan.fail_after_steps or 0):
                    raise InjectedEngineError("Injected engine failure mid-stream.")
        finally:
            await stream.aclose()

    def _draw(self) -> tuple[bool, bool, bool]:
        plan = self.plan
        fail, stall, die = plan.fail_requests > 0, plan.stall_requests > 0, plan.die_requests > 0
        plan.fail_requests -= int(fail)
        plan.stall_requests -= int(stall)
        plan.die_requests -= int(die)
        return fail, stall, die
