"""What operators see of the routing layer: ``/health/detailed``'s deployments component
and ``/resilience/stats``' deployment section."""

from __future__ import annotations

from collections.abc import Iterable
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
        "standby_ready": _all_known(getattr(d.engine, "standby_ready", None) for d in engines),
        "engine_core_pids": [pid for d in engines for pid in getattr(d.engine, "core_pids", [])],
    }


def _all_known(values: Iterable[bool | None]) -> bool | None:
    """All the known values true; None when none is known (no standby is kept)."""
    known = [value for value in values if value is not None]
    return all(known) if known else None
