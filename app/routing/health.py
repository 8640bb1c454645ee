"""What operators see of the routing layer: ``/health/detailed``'s deployments component
and ``/resilience/stats``' deployment section."""

from __future__ import annotations

from typing import Any

from app.deployments.local import LocalDeployment
from app.routing.registry import ModelRegistry


def deployments_component(registry: ModelRegistry) -> dict[str, Any]:
    """``down`` when a model has no live deployment nor live fallback (readiness fails),
    ``degraded`` when any deployment is not up, else ``ok``."""
    router = registry.router
    unavailable = router.unavailable_models()
    deployments = {d.state.name: d.describe() for d in router.deployments()}
    degraded = any(d["status"] != "up" or not d.get("ready", True) for d in deployments.values())
    status = "down" if unavailable else "degraded" if degraded else "ok"
    return {
        "status": status,
        "unavailable_models": unavailable,
        "deployments": deployments,
        "registry": registry.describe(),
    }


def engines_summary(registry: ModelRegistry) -> dict[str, Any]:
    """The in-process engines together (one, without MODELS_FILE)."""
    engines = [d for d in registry.router.deployments() if isinstance(d, LocalDeployment)]
    failures = [getattr(d.engine, "last_failure", None) for d in engines]
    return {
        "ready": all(d.ready for d in engines),
        "unfinished_requests": sum(d.engine.num_unfinished_requests() for d in engines),
        "restarts": sum(getattr(d.engine, "restarts", 0) for d in engines),
        "last_failure": next((f for f in failures if f), None),
    }
