"""The router over real deployment objects (in-process deployments on scripted engines):
names and aliases, what a key may see, the order of attempts with fallbacks, overflow and
readiness."""

from __future__ import annotations

import pytest

from app.auth.buckets import Limits
from app.auth.keys import Principal
from app.deployments.base import DeploymentState
from app.deployments.local import LocalDeployment
from app.errors import ModelNotFoundError
from app.resilience.breaker import EngineBreaker
from app.routing.catalog import parse_catalog
from app.routing.router import ModelRoute, Router
from app.routing.strategies import Strategy
from tests.support.scripted_engine import ScriptedEngine

ANYONE = Principal("anyone", Limits(rpm=None, tpm=None))
CATALOG = parse_catalog(
    {
        "models": [
            {
                "id": "main",
                "aliases": ["default"],
                "fallbacks": ["backup"],
                "deployments": [{"name": "a", "kind": "local"}, {"name": "b", "kind": "local"}],
            },
            {"id": "backup", "deployments": [{"name": "c", "kind": "local"}]},
        ],
        "context_overflow": {"main": "backup"},
    },
    "test",
)


def _router() -> tuple[Router, dict[str, LocalDeployment]]:
    deployments = {}
    routes = {}
    for model in CATALOG.models:
        local = []
        for spec in model.deployments:
            state = DeploymentState(spec.name, model.id, "local", EngineBreaker(fail_max=1))
            local.append(LocalDeployment(state, ScriptedEngine(served_name=model.id), owned=False))
            deployments[spec.name] = local[-1]
        strategy = Strategy("least_outstanding", [d.state.name for d in local], 1.25)
        routes[model.id] = ModelRoute(model, local, local[0].engine, strategy, 0)  # type: ignore[arg-type]
    return Router(CATALOG, routes), deployments


def test_ids_and_aliases_resolve_and_others_are_404() -> None:
    router, _ = _router()
    assert router.resolve("default", ANYONE).id == "main"
    assert router.resolve(None, ANYONE).id == "main"  # the first model
    with pytest.raises(ModelNotFoundError):
        router.resolve("nope", ANYONE)


def test_a_key_sees_only_its_models_and_their_aliases() -> None:
    """A key limited to ``main`` lists main and its alias, and gets 404 for backup."""
    limited = Principal("k", Limits(rpm=None, tpm=None), models=frozenset({"main"}))
    router, _ = _router()
    assert {card["id"] for card in router.cards(limited)} == {"main", "default"}
    with pytest.raises(ModelNotFoundError):
        router.resolve("backup", limited)


def test_attempts_go_least_loaded_first_then_the_fallback() -> None:
    router, deployments = _router()
    deployments["a"].state.begin()
    route = router.resolve("main", ANYONE)
    assert [d.state.name for _, d in router.plan(route, None)] == ["b", "a", "c"]
    assert [r.id for r, _ in router.plan(route, None)] == ["main", "main", "backup"]


def test_an_open_breaker_or_failed_health_leaves_the_plan() -> None:
    """A deployment whose breaker opened, or that failed its health checks, is not tried;
    with every deployment out the model is unavailable (readiness fails)."""
    router, deployments = _router()
    permit = deployments["a"].state.breaker.admit()
    permit.record_failure(RuntimeError("engine fault"))
    deployments["b"].state.healthy = False
    route = router.resolve("main", ANYONE)
    assert [d.state.name for _, d in router.plan(route, None)] == ["c"]
    assert router.unavailable_models() == []  # main's fallback is live
    deployments["c"].state.healthy = False
    assert router.unavailable_models() == ["main", "backup"]


def test_context_overflow_names_the_long_model() -> None:
    router, _ = _router()
    assert router.overflow(router.resolve("main", ANYONE)).id == "backup"  # type: ignore[union-attr]
    assert router.overflow(router.resolve("backup", ANYONE)) is None
