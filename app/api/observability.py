"""``GET /metrics``, ``GET /alerts``, ``GET /health/detailed``.

``METRICS_ENABLED=false`` turns ``/metrics`` into a 404 (metrics are still kept for the
in-process alerts).

The request-context middleware keeps these paths out of request metrics.
"""

from __future__ import annotations

from fastapi import APIRouter
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.responses import Response

from app.api.errors import error_response
from app.api.http import json_response
from app.deps import StateDep
from app.errors import NotFoundError
from app.observability.metrics import render_metrics
from app.schemas.errors import ERROR_RESPONSES

router = APIRouter(tags=["observability"])


@router.get(
    "/metrics",
    include_in_schema=True,
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}, 404: ERROR_RESPONSES[404]},
)
async def metrics(state: StateDep) -> Response:
    """Prometheus text exposition: ``gateway_*`` and vLLM's ``vllm:*`` metrics."""
    if not state.settings.observability.metrics_enabled:
        return error_response(NotFoundError("Metrics are disabled (METRICS_ENABLED=false)."))
    return Response(render_metrics(state.metrics), media_type=CONTENT_TYPE_LATEST)


@router.get("/alerts", include_in_schema=True)
async def alerts(state: StateDep) -> Response:
    """The in-process alerts: firing, pending, and recent transitions (newest first)."""
    return json_response(state.alerts.report())


@router.get("/health/detailed", include_in_schema=True, responses={503: {"description": "Down"}})
async def health_detailed(state: StateDep) -> Response:
    """Every component's status and numbers; 503 when the overall status is ``down``."""
    report = state.health.report()
    return json_response(report, status_code=503 if report["status"] == "down" else 200)
