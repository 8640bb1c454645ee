"""``RequestContextMiddleware``: request id, response headers, request metrics and log line.

Pure ASGI (no ``BaseHTTPMiddleware``, which would buffer streams and break contextvars).
For each HTTP request it:

1. takes ``X-Request-ID`` from the client when valid (1..128 of ``[A-Za-z0-9._-]``) or makes
   one, and binds a :class:`RequestContext` to a contextvar for the request's lifetime;
2. adds ``X-Request-ID``, ``X-Model`` (the model that answered, when known),
   ``X-Deployment`` (the deployment that served it) and ``X-Duration-Ms`` (time to the
   response headers) to every response it sees start;
3. when the response is over, counts it (``gateway_requests_total``,
   ``gateway_request_duration_seconds`` to the last byte, ``gateway_errors_total``) and
   logs one ``request`` line — except for the quiet paths (``/metrics``, health, alerts),
   which are logged at DEBUG and never counted.

A response that started but never finished is a client that went away: status 499.
Add it last, so it wraps everything (a 413 from the body limit still gets an id)::

    app.add_middleware(RequestContextMiddleware, metrics=metrics, log_prompts=False,
                       default_model=lambda: engine.model_info.served_name)
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.observability.context import REQUEST_ID_HEADER, RequestContext, bind, unbind
from app.observability.context import valid_request_id as _valid_request_id
from app.observability.metrics import GatewayMetrics

QUIET_PATHS = ("/metrics", "/healthz", "/readyz", "/health/", "/alerts")
CLIENT_CLOSED = 499
NO_MODEL = "none"

request_log = logging.getLogger("gateway.request")


@dataclass(slots=True)
class _Exchange:
    """What the middleware saw of the response."""

    status: int | None = None
    ended: float | None = None
    raised: BaseException | None = None


class RequestContextMiddleware:
    """See the module docstring. ``default_model`` may raise (engine loading): no header."""

    def __init__(
        self,
        app: ASGIApp,
        metrics: GatewayMetrics | None = None,
        *,
        log_prompts: bool = False,
        default_model: Callable[[], str | None] | None = None,
        quiet_paths: Collection[str] = QUIET_PATHS,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.log_prompts = log_prompts
        self.default_model = default_model
        self.quiet_paths = tuple(quiet_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        ctx = self._context(scope)
        quiet = self._is_quiet(scope["path"])
        exchange = _Exchange()
        token = bind(ctx)
        if self.metrics is not None and not quiet:
            self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, self._sender(ctx, exchange, send))
        except BaseException as exc:
            exchange.raised = exc
            raise
        finally:
            self._finish(ctx, exchange, quiet)
            unbind(token)

    def _context(self, scope: Scope) -> RequestContext:
        return RequestContext(
            request_id=_valid_request_id(_header(scope, REQUEST_ID_HEADER)),
            method=scope.get("method", "GET"),
            path=scope["path"],
            log_prompts=self.log_prompts,
            scope=scope,
        )

    def _is_quiet(self, path: str) -> bool:
        return any(path == p or (p.endswith("/") and path.startswith(p)) for p in self.quiet_paths)

    def _sender(self, ctx: RequestContext, exchange: _Exchange, send: Send) -> Send:
        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                exchange.status = message["status"]
                self._add_headers(ctx, message)
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                exchange.ended = time.perf_counter()
            await send(message)

        return sending

    def _add_headers(self, ctx: RequestContext, message: Message) -> None:
        headers = MutableHeaders(scope=message)
        headers["X-Request-ID"] = ctx.request_id
        model = ctx.model or self._default_model()
        if model:
            headers["X-Model"] = model
        if ctx.deployment:
            headers["X-Deployment"] = ctx.deployment
        headers["X-Duration-Ms"] = f"{ctx.elapsed() * 1000:.1f}"

    def _default_model(self) -> str | None:
        if self.default_model is None:
            return None
        try:
            return self.default_model()
        except Exception:  # the engine is loading: a header is not worth failing a response
            return None

    def _finish(self, ctx: RequestContext, exchange: _Exchange, quiet: bool) -> None:
        status = _outcome(ctx, exchange)
        duration = (exchange.ended or time.perf_counter()) - ctx.started
        if quiet:
            request_log.debug("request", extra=_log_fields(ctx, status, exchange, duration))
            return
        if self.metrics is not None:
            self.metrics.in_flight.dec()
            _count(self.metrics, ctx, status, duration)
        level = logging.WARNING if status >= 500 else logging.INFO
        request_log.log(level, "request", extra=_log_fields(ctx, status, exchange, duration))


def _outcome(ctx: RequestContext, exchange: _Exchange) -> int:
    """The status to count: an error noted by the service wins over the HTTP status."""
    if exchange.raised is not None and exchange.ended is None:
        cancelled = isinstance(exchange.raised, asyncio.CancelledError)
        if not cancelled:
            ctx.fail(500, "internal_error", repr(exchange.raised))
        return ctx.status or (CLIENT_CLOSED if cancelled else 500)
    if exchange.status is not None and exchange.ended is None:
        ctx.fail(CLIENT_CLOSED, "client_closed_request", "the client went away mid-response")
    return ctx.status or exchange.status or 500


def _count(metrics: GatewayMetrics, ctx: RequestContext, status: int, duration: float) -> None:
    route, model = ctx.route, ctx.model or NO_MODEL
    metrics.requests.labels(route, model, str(status)).inc()
    metrics.request_duration.labels(route, model).observe(duration)
    if status >= 400:
        metrics.errors.labels(route, ctx.error_code or f"http_{status}").inc()


def _log_fields(
    ctx: RequestContext, status: int, exchange: _Exchange, duration: float
) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "request_id": ctx.request_id,
        "method": ctx.method,
        "path": ctx.path,
        "route": ctx.route,
        "status": status,
        "http_status": exchange.status,
        "latency_s": round(duration, 4),
        "model": ctx.model,
        "deployment": ctx.deployment,
        "resumed_from": ctx.resumed_from,
        "key_name": ctx.key_name,
        "priority": ctx.priority,
        "stream": ctx.stream,
        "ttft_s": _rounded(ctx.ttft_s),
        "queue_wait_s": _rounded(ctx.queue_wait_s),
        "prompt_tokens": ctx.prompt_tokens,
        "completion_tokens": ctx.completion_tokens,
        "error_code": ctx.error_code,
        "error": ctx.error_reason,
    }
    if ctx.log_prompts:
        fields.update(prompt=ctx.prompt, completion=ctx.completion)
    return {name: value for name, value in fields.items() if value is not None}


def _rounded(value: float | None) -> float | None:
    return round(value, 4) if value is not None else None


def _header(scope: Scope, name: str) -> str | None:
    wanted = name.encode("latin-1")
    for key, value in scope["headers"]:
        if key.lower() == wanted:
            return value.decode("latin-1")
    return None
