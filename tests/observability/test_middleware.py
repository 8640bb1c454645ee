"""RequestContextMiddleware: request ids, response headers, request metrics, the log line."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from fastapi import FastAPI, Request
from prometheus_client import CollectorRegistry
from starlette.responses import Response, StreamingResponse
from starlette.testclient import TestClient
from starlette.types import Message, Receive, Scope, Send

from app.api.errors import error_response
from app.errors import GatewayError, RateLimitError
from app.observability.context import current_request, record_error
from app.observability.metrics import GatewayMetrics
from app.observability.middleware import RequestContextMiddleware


def build_app(metrics: GatewayMetrics, **options: Any) -> FastAPI:
    """A tiny app: the middleware, an error handler that notes errors, a few routes."""
    app = FastAPI()

    async def on_gateway_error(_: Request, exc: Exception) -> Response:
        record_error(exc)
        return error_response(exc)  # type: ignore[arg-type]

    app.add_exception_handler(GatewayError, on_gateway_error)
    add_generation_routes(app, metrics)
    add_plain_routes(app)
    app.add_middleware(RequestContextMiddleware, metrics=metrics, **options)
    return app


def add_generation_routes(app: FastAPI, metrics: GatewayMetrics) -> None:
    """Routes that record like the generation service: one JSON, one stream that breaks."""

    @app.post("/v1/generate")
    async def generate() -> dict[str, int]:
        recorder = metrics.recorder("tiny")
        recorder.admitted(0.01, priority=0)
        for _ in range(3):
            recorder.token(1)
        recorder.content(prompt="hello", completion="world")
        recorder.finish(prompt_tokens=5)
        return {"ok": 1}

    @app.get("/v1/stream")
    async def stream() -> StreamingResponse:
        recorder = metrics.recorder("tiny")

        async def events() -> AsyncIterator[bytes]:
            try:
                for _ in range(2):
                    recorder.token(1)
                    yield b"data: x\n\n"
                raise GatewayError("engine died", code="engine_unavailable")
            except GatewayError as exc:
                recorder.finish(503, 4, None, exc.code, exc.message)
                yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")


def add_plain_routes(app: FastAPI) -> None:
    """A templated route, a handled error, an unhandled one and a health probe."""

    @app.get("/v1/models/{model_id}")
    async def model(model_id: str) -> dict[str, str]:
        ctx = current_request()
        assert ctx is not None
        ctx.key_name = "team-a"
        return {"id": model_id}

    @app.get("/v1/limited")
    async def limited() -> None:
        raise RateLimitError("slow down", retry_after=1)

    @app.get("/v1/boom")
    async def boom() -> None:
        raise RuntimeError("kaput")

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}


@pytest.fixture
def metrics() -> GatewayMetrics:
    return GatewayMetrics.for_registry(CollectorRegistry())


@pytest.fixture
def client(metrics: GatewayMetrics) -> TestClient:
    app = build_app(metrics, default_model=lambda: "tiny")
    return TestClient(app, raise_server_exceptions=False)


class RequestLogs:
    """The 'gateway.request' records of the current test phase, read through caplog."""

    def __init__(self, caplog: pytest.LogCaptureFixture) -> None:
        self.caplog = caplog
        caplog.set_level(logging.DEBUG, logger="gateway.request")

    def info(self) -> list[logging.LogRecord]:
        return [r for r in self.caplog.records if r.levelno == logging.INFO]

    def last(self) -> dict[str, object]:
        return self.caplog.records[-1].__dict__


@pytest.fixture
def request_logs(caplog: pytest.LogCaptureFixture) -> RequestLogs:
    return RequestLogs(caplog)


def count(metrics: GatewayMetrics, route: str, status: str, model: str = "none") -> float | None:
    labels = {"route": route, "model": model, "status": status}
    return metrics.registry.get_sample_value("gateway_requests_total", labels)


def test_valid_client_request_id_is_echoed(client: TestClient) -> None:
    """A valid X-Request-ID is kept and echoed with X-Model and X-Duration-Ms."""
    response = client.get("/v1/models/tiny", headers={"X-Request-ID": "abc.DEF-123_x"})
    assert response.headers["x-request-id"] == "abc.DEF-123_x"
    assert response.headers["x-model"] == "tiny"
    assert float(response.headers["x-duration-ms"]) >= 0


@pytest.mark.parametrize("bad", ["", "has space", "x" * 129, "semi;colon", 'quo"te', "a/b"])
def test_invalid_request_id_is_replaced(client: TestClient, bad: str) -> None:
    """An invalid X-Request-ID is replaced by a generated 32-hex id, never echoed."""
    response = client.get("/healthz", headers={"X-Request-ID": bad})
    rid = response.headers["x-request-id"]
    assert rid != bad and len(rid) == 32 and int(rid, 16) >= 0


def test_missing_request_id_is_generated_and_unique(client: TestClient) -> None:
    """Without a header every response gets a fresh id."""
    ids = {client.get("/healthz").headers["x-request-id"] for _ in range(3)}
    assert len(ids) == 3


def test_request_counted_under_route_template(client: TestClient, metrics: GatewayMetrics) -> None:
    """Requests are labelled by route template, not raw path, so labels stay bounded."""
    client.get("/v1/models/a")
    client.get("/v1/models/b")
    assert count(metrics, "/v1/models/{model_id}", "200") == 2
    labels = {"route": "/v1/models/{model_id}", "model": "none"}
    assert metrics.registry.get_sample_value("gateway_request_duration_seconds_count", labels) == 2
    assert metrics.registry.get_sample_value("gateway_requests_in_flight") == 0


def test_quiet_paths_are_not_counted(
    client: TestClient, metrics: GatewayMetrics, request_logs: RequestLogs
) -> None:
    """Health probes get headers but stay out of request metrics and the INFO log."""
    assert "x-request-id" in client.get("/healthz").headers
    assert request_logs.info() == []
    total = sum(
        sample.value
        for family in metrics.registry.collect()
        if family.name == "gateway_requests"
        for sample in family.samples
    )
    assert total == 0


def test_unknown_paths_share_one_route_label(client: TestClient, metrics: GatewayMetrics) -> None:
    """404s for arbitrary paths count under route 'other' with error code http_404."""
    client.get("/no/such/path/1")
    client.get("/no/such/path/2")
    assert count(metrics, "other", "404") == 2
    errors = {"route": "other", "code": "http_404"}
    assert metrics.registry.get_sample_value("gateway_errors_total", errors) == 2


def test_log_line_has_the_request_fields(client: TestClient, request_logs: RequestLogs) -> None:
    """One INFO 'request' line per request with id, route, model, tokens, TTFT and queue wait."""
    client.post("/v1/generate", headers={"X-Request-ID": "req-1"})
    (line,) = request_logs.info()
    assert line.getMessage() == "request"
    fields = line.__dict__
    assert fields["request_id"] == "req-1" and fields["route"] == "/v1/generate"
    assert (fields["status"], fields["model"], fields["priority"]) == (200, "tiny", 0)
    assert (fields["prompt_tokens"], fields["completion_tokens"]) == (5, 3)
    assert fields["queue_wait_s"] == 0.01 and fields["ttft_s"] >= 0
    assert "prompt" not in fields and "completion" not in fields and "error" not in fields


def test_prompts_are_logged_only_when_enabled(
    metrics: GatewayMetrics, request_logs: RequestLogs
) -> None:
    """With log_prompts the line carries the prompt and completion."""
    client = TestClient(build_app(metrics, log_prompts=True))
    client.post("/v1/generate")
    (line,) = request_logs.info()
    assert (line.__dict__["prompt"], line.__dict__["completion"]) == ("hello", "world")


def test_key_name_set_by_the_handler_is_logged(
    client: TestClient, request_logs: RequestLogs
) -> None:
    """Fields filled into the context by request code appear in the line."""
    client.get("/v1/models/tiny")
    assert request_logs.last()["key_name"] == "team-a"


def test_model_header_follows_the_request_model(client: TestClient) -> None:
    """X-Model is the model the service resolved for the request."""
    assert client.post("/v1/generate").headers["x-model"] == "tiny"


def test_handled_error_counts_status_and_code(
    client: TestClient, metrics: GatewayMetrics, request_logs: RequestLogs
) -> None:
    """A GatewayError noted by the handler counts its status and code and logs its reason."""
    response = client.get("/v1/limited")
    assert response.status_code == 429 and "x-request-id" in response.headers
    assert count(metrics, "/v1/limited", "429") == 1
    errors = {"route": "/v1/limited", "code": "rate_limit_exceeded"}
    assert metrics.registry.get_sample_value("gateway_errors_total", errors) == 1
    assert request_logs.last()["error"] == "slow down"


def test_stream_that_fails_after_200_counts_the_error_status(
    client: TestClient, metrics: GatewayMetrics, request_logs: RequestLogs
) -> None:
    """A stream whose service recorded a 503 mid-way counts as 503, logged at WARNING."""
    response = client.get("/v1/stream")
    assert response.status_code == 200 and response.text.endswith("[DONE]\n\n")
    assert count(metrics, "/v1/stream", "503", model="tiny") == 1
    line = request_logs.last()
    assert line["levelno"] == logging.WARNING
    assert (line["http_status"], line["error_code"]) == (200, "engine_unavailable")
    assert line["completion_tokens"] == 2


def test_unhandled_exception_counts_500(
    client: TestClient, metrics: GatewayMetrics, request_logs: RequestLogs
) -> None:
    """An exception escaping the app is counted as 500 with code internal_error."""
    assert client.get("/v1/boom").status_code == 500
    assert count(metrics, "/v1/boom", "500") == 1
    assert request_logs.last()["error_code"] == "internal_error"


def test_response_cut_short_counts_499(metrics: GatewayMetrics) -> None:
    """A response that starts but never sends its last byte (client gone) counts as 499."""

    async def half_stream(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"a", "more_body": True})

    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/v1/x", "headers": []}
    asyncio.run(RequestContextMiddleware(half_stream, metrics)(scope, receive, send))
    assert count(metrics, "other", "499") == 1
    headers = dict(sent[0]["headers"])
    assert b"x-request-id" in headers and b"x-model" not in headers


def test_lifespan_passes_through(metrics: GatewayMetrics) -> None:
    """Non-HTTP scopes reach the app untouched."""
    seen: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["type"])

    async def noop() -> Message:
        return {}

    async def sink(_: Message) -> None:
        return None

    asyncio.run(RequestContextMiddleware(app, metrics)({"type": "lifespan"}, noop, sink))
    assert seen == ["lifespan"]
