"""``EngineMetrics``: every local engine's ``vllm:*`` metrics in one scrape, by deployment.

Each engine keeps its metrics on a registry of its own (:mod:`app.engine.vllm_metrics`).
This collector, registered on the gateway's registry, merges them: one family per metric
name (the text format allows a family once), each sample labelled with its ``deployment``
(two deployments of one model would otherwise share ``model_name`` and ``engine``).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from typing import Protocol

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric


class EngineRegistries(Protocol):
    """What holds the live deployments (the model registry): their engines' registries."""

    def engine_registries(self) -> Iterable[tuple[str, CollectorRegistry]]: ...


class EngineMetrics:
    """A prometheus_client collector over the engines of every watched source."""

    def __init__(self) -> None:
        # Weak: an app (a test's) that is gone takes its deployments out of the scrape.
        self._sources: weakref.WeakSet[EngineRegistries] = weakref.WeakSet()

    def watch(self, source: EngineRegistries) -> None:
        self._sources.add(source)

    def describe(self) -> list[Metric]:
        # The names follow the catalogue and the engines' lives: nothing to check at register.
        return []

    def collect(self) -> list[Metric]:
        families: dict[str, Metric] = {}
        seen: set[int] = set()  # one engine given to several apps (tests) is scraped once
        for source in list(self._sources):
            for deployment, registry in source.engine_registries():
                if id(registry) in seen:
                    continue
                seen.add(id(registry))
                for family in registry.collect():
                    merged = families.get(family.name)
                    if merged is None:
                        merged = Metric(family.name, family.documentation, family.type)
                        families[family.name] = merged
                    merged.samples.extend(
                        sample._replace(labels={**sample.labels, "deployment": deployment})
                        for sample in family.samples
                    )
        return list(families.values())
