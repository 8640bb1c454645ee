"""Everything the routers read, built once by :func:`app.main.create_app`.

Routers never reach into ``request.app.state``: they take typed dependencies
(:mod:`app.deps`) that return these parts.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.auth.keys import KeyStore
from app.config import Settings
from app.lifecycle import Lifecycle
from app.observability.alerts import AlertEvaluator
from app.observability.health import HealthReporter
from app.observability.metrics import GatewayMetrics
from app.routing.registry import ModelRegistry
from app.services.lease import Guards
from app.services.pipeline import GenerationPipeline


@dataclass
class GatewayState:
    settings: Settings
    registry: ModelRegistry
    guards: Guards
    keys: KeyStore
    pipeline: GenerationPipeline
    lifecycle: Lifecycle
    alerts: AlertEvaluator
    health: HealthReporter
    metrics: GatewayMetrics
