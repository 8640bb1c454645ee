"""``GET /metrics``, ``GET /alerts``, ``GET /health/detailed``.

They read what they need from ``request.app.state``:

- ``metrics``: :class:`~app.observability.metrics.GatewayMetrics`, or ``None`` when
  ``METRICS_ENABLED=false`` (then ``/metrics`` answers 404);
- ``alerts``: :class:`~app.observability.alerts.AlertEvaluator`;
- ``health``: :class:`~app.observability.health.HealthReporter`.

The request-context middleware keeps these paths out of request metrics.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.responses import Response

from app.api.http import json_response
from app.errors import NotFoundError, error_response
from app.observability.metrics import render_metrics
from app.schemas.errors import ERROR_RESPONSES

router = APIRouter(tags=["observability"])


@router.get(
    "/metrics",
    include_in_schema=True,
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}, 404: ERROR_RESPONSES[404]},
)
async def metrics(request: Request) -> Response:
    """Prometheus text exposition: ``gateway_*`` and vLLM's ``vllm:*`` metrics."""
    gateway = getattr(request.app.state, "metrics", None)
    if gateway is None:
        return error_response(NotFoundError("Metrics are disabled (METRICS_ENABLED=false)."))
    return Response(render_metrics(gateway), media_type=CONTENT_TYPE_LATEST)


@router.get("/alerts", include_in_schema=True)
async def alerts(request: Request) -> Response:
    """The in-process alerts: firing, pending, and recent transitions (newest first)."""
    return json_response(request.app.state.alerts.report())


@router.get("/health/detailed", include_in_schema=True, responses={503: {"description": "Down"}})
async def health_detailed(request: Request) -> Response:
    """Every component's status and numbers; 503 when the overall status is ``down``."""
    report = request.app.state.health.report()
    return json_response(report, status_code=503 if report["status"] == "down" else 200)
