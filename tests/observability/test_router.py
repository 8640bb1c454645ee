"""GET /metrics, /alerts and /health/detailed on a tiny app holding only our parts."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from fastapi import FastAPI
from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.testclient import TestClient

from app.api.observability import router
from app.observability.alerts import AlertEvaluator
from app.observability.health import HealthReporter
from app.observability.metrics import GatewayMetrics
from app.observability.middleware import RequestContextMiddleware
from app.observability.settings import ObservabilitySettings
from tests.support.engine_registries import Deployments


def build_app(metrics: GatewayMetrics | None, engine_status: str = "ok") -> FastAPI:
    """The router and middleware with only the parts of the gateway's state it reads."""
    app = FastAPI(version="9.9.9")
    registry = metrics.registry if metrics is not None else CollectorRegistry()
    health = HealthReporter(version=app.version, model="tiny")
    health.add("engine", {"status": engine_status})
    app.state.gateway = SimpleNamespace(
        settings=SimpleNamespace(
            observability=ObservabilitySettings(metrics_enabled=metrics is not None)
        ),
        metrics=metrics,
        alerts=AlertEvaluator([registry], ObservabilitySettings(), clock=lambda: 5.0),
        health=health,
    )
    app.include_router(router)
    app.add_middleware(RequestContextMiddleware, metrics=metrics)
    return app


@pytest.fixture
def metrics() -> GatewayMetrics:
    return GatewayMetrics.for_registry(CollectorRegistry())


def test_metrics_exposition(metrics: GatewayMetrics) -> None:
    """/metrics serves Prometheus text with gateway_* and the engines' vllm:*."""
    engine = CollectorRegistry()
    Gauge("vllm:test_only_running", "stand-in", registry=engine)
    deployments = Deployments({"local": engine})
    metrics.engines.watch(deployments)
    response = TestClient(build_app(metrics)).get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"] == CONTENT_TYPE_LATEST
    assert "# TYPE gateway_requests_total counter" in response.text
    assert 'vllm:test_only_running{deployment="local"} 0.0' in response.text


def test_metrics_disabled_is_404() -> None:
    """With METRICS_ENABLED=false /metrics answers 404."""
    response = TestClient(build_app(None)).get("/metrics")
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"


def test_own_routes_are_not_request_metrics(metrics: GatewayMetrics) -> None:
    """Scrapes, alert and health reads never count in gateway_requests_total."""
    client = TestClient(build_app(metrics))
    for path in ("/metrics", "/alerts", "/health/detailed", "/metrics"):
        client.get(path)
    assert "gateway_requests_total{" not in client.get("/metrics").text


def test_alerts_report(metrics: GatewayMetrics) -> None:
    """/alerts answers firing, pending and history; a fresh engine-down shows as pending."""
    body = TestClient(build_app(metrics)).get("/alerts").json()
    assert set(body) == {"evaluated_at", "firing", "pending", "history"}
    assert body["firing"] == [] and "GatewayEngineDown" in [a["name"] for a in body["pending"]]


def test_health_detailed_ok_and_down(metrics: GatewayMetrics) -> None:
    """200 with the report when up; 503 when a critical component is down."""
    ok = TestClient(build_app(metrics)).get("/health/detailed")
    assert ok.status_code == 200
    assert (ok.json()["status"], ok.json()["version"], ok.json()["model"]) == (
        "ok",
        "9.9.9",
        "tiny",
    )
    down = TestClient(build_app(metrics, engine_status="down")).get("/health/detailed")
    assert down.status_code == 503 and down.json()["status"] == "down"


def test_routes_are_in_the_openapi_schema(metrics: GatewayMetrics) -> None:
    """The three routes are documented in the OpenAPI schema."""
    paths = TestClient(build_app(metrics)).get("/openapi.json").json()["paths"]
    assert {"/metrics", "/alerts", "/health/detailed"} <= set(paths)
