"""``LocalDeployment``: an in-process engine (today's ``EngineSupervisor`` over vLLM) as a
deployment. The engine is also its model's tokenizer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from prometheus_client import CollectorRegistry

from app.deployments.base import DeploymentState
from app.engine.protocol import EmbeddingJob, EngineClient, EngineStep, Job


class LocalDeployment:
    """Runs jobs on ``engine``; starts and stops it only when ``owned``."""

    def __init__(self, state: DeploymentState, engine: EngineClient, owned: bool) -> None:
        self.state, self.engine, self.owned = state, engine, owned

    @property
    def ready(self) -> bool:
        return self.engine.is_ready

    @property
    def ready_in_s(self) -> float | None:
        """The supervisor's predicted seconds until the engine is ready (0 when it is)."""
        hint = getattr(self.engine, "ready_in_s", None)
        return None if hint is None else float(hint)

    @property
    def last_progress_at(self) -> float:
        return self.engine.last_progress_at

    @property
    def stat_registry(self) -> CollectorRegistry | None:
        """The engine's ``vllm:*`` metrics (None for an engine without them: not ready,
        restarting, or a scripted one)."""
        registry = getattr(self.engine, "stat_registry", None)
        return registry if isinstance(registry, CollectorRegistry) else None

    @property
    def resumable(self) -> bool:
        return True

    @property
    def max_model_len(self) -> int:
        return self.engine.model_info.max_model_len

    def generate(self, job: Job) -> AsyncIterator[EngineStep]:
        return self.engine.generate(job.prompt_ids, job.options, job.request_id, job.priority)

    async def embed(self, jobs: list[EmbeddingJob]) -> list[list[float]]:
        """Every input at once: the engine batches them (a failure cancels the others)."""
        engine = self.engine
        tasks = [
            asyncio.ensure_future(
                engine.embed(job.prompt_ids, job.request_id, job.dimensions, job.priority)
            )
            for job in jobs
        ]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            for task in tasks:
                task.cancel()  # vLLM aborts what it still runs
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    async def start(self) -> None:
        if self.owned:
            await self.engine.start()  # type: ignore[attr-defined]

    async def stop(self) -> None:
        if self.owned:
            await self.engine.stop()  # type: ignore[attr-defined]

    def describe(self) -> dict[str, Any]:
        engine = self.engine
        return {
            **self.state.describe(),
            "ready": engine.is_ready,
            "unfinished_requests": engine.num_unfinished_requests(),
            "restarts": getattr(engine, "restarts", 0),
            "standby_ready": getattr(engine, "standby_ready", None),
            "ready_in_s": self.ready_in_s,
            "last_failure": getattr(engine, "last_failure", None),
        }
