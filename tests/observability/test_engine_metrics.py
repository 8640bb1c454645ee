"""EngineMetrics: the engines' private ``vllm:*`` registries in one scrape, by deployment.

The registries here are prometheus_client's, filled the way vLLM's logger fills an engine's
(one ``Gauge``/``Counter`` per name, labelled ``model_name`` and ``engine``); the real
engines' are checked in tests/engine/test_engine.py and tests/e2e/test_failover.py.
"""

from __future__ import annotations

import gc

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.parser import text_string_to_metric_families

from app.observability.metrics import GatewayMetrics, render_metrics
from tests.support.engine_registries import Deployments

LABELS = ("model_name", "engine")
RUNNING = "vllm:num_requests_running"


def engine_registry(running: float, tokens: float) -> CollectorRegistry:
    registry = CollectorRegistry()
    Gauge("vllm:num_requests_running", "Running.", LABELS, registry=registry).labels(
        "tiny-llama", "0"
    ).set(running)
    Counter("vllm:generation_tokens", "Tokens.", LABELS, registry=registry).labels(
        "tiny-llama", "0"
    ).inc(tokens)
    return registry


def scrape(metrics: GatewayMetrics) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Family name -> its samples, from the text exposition; a name twice fails."""
    families: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(render_metrics(metrics).decode()):
        assert family.name not in families, f"{family.name} exposed twice"
        families[family.name] = [(s.labels, s.value) for s in family.samples]
    return families


def test_two_engines_of_one_model_are_one_family_told_apart_by_deployment() -> None:
    metrics = GatewayMetrics(CollectorRegistry())
    deployments = Deployments({"local-a": engine_registry(2, 40), "local-b": engine_registry(1, 7)})
    metrics.engines.watch(deployments)

    families = scrape(metrics)

    running = {
        labels["deployment"]: value for labels, value in families["vllm:num_requests_running"]
    }
    assert running == {"local-a": 2, "local-b": 1}
    tokens = families["vllm:generation_tokens"]
    assert {(labels["deployment"], value) for labels, value in tokens} == {
        ("local-a", 40),
        ("local-b", 7),
    }
    assert all(labels["model_name"] == "tiny-llama" for labels, _ in tokens)


def test_the_scrape_follows_the_deployments_and_counts_a_shared_engine_once() -> None:
    metrics = GatewayMetrics(CollectorRegistry())
    shared = engine_registry(3, 9)
    first, second = Deployments({"local": shared}), Deployments({"local": shared})
    metrics.engines.watch(first)
    metrics.engines.watch(second)
    assert len(scrape(metrics)[RUNNING]) == 1

    first.engines, second.engines = {}, {}  # the engine stopped (or is restarting)
    assert RUNNING not in scrape(metrics)


def test_an_app_that_is_gone_leaves_the_scrape() -> None:
    metrics = GatewayMetrics(CollectorRegistry())
    metrics.engines.watch(Deployments({"local": engine_registry(1, 1)}))
    gc.collect()
    assert RUNNING not in scrape(metrics)
