"""vLLM's Prometheus metrics for one engine, on a registry of the engine's own.

vLLM registers an engine's ``vllm:*`` metrics on prometheus_client's default registry, and
each new engine first unregisters every ``vllm:*`` collector there
(``PrometheusStatLogger.__init__`` calls ``unregister_vllm_metrics()``): with two local
deployments in one process, only the last-built engine's metrics would be left. Each
engine's logger is therefore bound to a private :class:`CollectorRegistry`, the way vLLM's
own Ray logger binds its metric classes; the gateway's ``/metrics`` merges those registries
with a ``deployment`` label (:mod:`app.observability.engine_metrics`).
"""

from __future__ import annotations

from functools import partial
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from vllm.distributed.ec_transfer.ec_connector.metrics import ECConnectorProm
from vllm.distributed.kv_transfer.kv_connector.v1.metrics import KVConnectorProm
from vllm.v1.metrics.loggers import PrometheusStatLogger
from vllm.v1.metrics.perf import PerfMetricsProm
from vllm.v1.spec_decode.metrics import SpecDecodingProm


def stat_logger_on(registry: CollectorRegistry) -> type[PrometheusStatLogger]:
    """vLLM's Prometheus stat logger (a class, as vLLM's ``stat_loggers`` takes it) with every
    metric it and its helpers create registered on ``registry``; given to ``AsyncLLM``, it
    also stands in for the default one, so the engine registers nothing on the global one."""
    # partial objects do not bind as methods: ``self._gauge_cls(...)`` calls them as is.
    kinds: dict[str, Any] = {
        "_gauge_cls": partial(Gauge, registry=registry),
        "_counter_cls": partial(Counter, registry=registry),
        "_histogram_cls": partial(Histogram, registry=registry),
    }
    helpers = {
        "_spec_decoding_cls": SpecDecodingProm,
        "_kv_connector_cls": KVConnectorProm,
        "_ec_connector_cls": ECConnectorProm,
        "_perf_metrics_cls": PerfMetricsProm,
    }
    bound = {
        attribute: type(f"Private{helper.__name__}", (helper,), kinds)
        for attribute, helper in helpers.items()
    }
    return type("PrivatePrometheusStatLogger", (PrometheusStatLogger,), {**kinds, **bound})
