"""Shutdown state: once draining, readiness fails and admission refuses new work (503)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from app.resilience.queue import PriorityAdmission

log = logging.getLogger(__name__)


@dataclass
class Lifecycle:
    admissions: list[PriorityAdmission]  # generation's, and embeddings'
    grace_s: float
    draining: bool = False

    async def drain(self) -> bool:
        """Stop admitting and wait up to the grace period for in-flight requests."""
        self.draining = True
        log.warning("draining", extra={"grace_s": self.grace_s})
        drained = await asyncio.gather(*(a.drain(self.grace_s) for a in self.admissions))
        return all(drained)
