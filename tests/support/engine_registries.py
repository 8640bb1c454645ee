"""A source of engine registries for EngineMetrics, where the model registry stands in the
app: deployment names and their engines' ``vllm:*`` registries, set by the test."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry


class Deployments:
    """Stands where the model registry does: deployment names and their engines' registries."""

    def __init__(self, engines: dict[str, CollectorRegistry]) -> None:
        self.engines = engines

    def engine_registries(self) -> Iterable[tuple[str, CollectorRegistry]]:
        return list(self.engines.items())
