"""The error hierarchy's two mappings: JSON response and SSE event."""

from __future__ import annotations

import json

from app.api.errors import error_response, error_sse_event
from app.errors import (
    AuthenticationError,
    ContextLengthExceededError,
    EngineUnavailableError,
    RateLimitError,
)
from tests.support.spec import validate


def test_json_mapping_has_status_envelope_and_retry_hints() -> None:
    """A 503 carries Retry-After (whole seconds, rounded up) and retry-after-ms."""
    response = error_response(EngineUnavailableError("down", retry_after=2.2))
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "3"
    assert response.headers["retry-after-ms"] == "2200"
    body = json.loads(response.body)
    validate("ErrorResponse", body)
    assert body["error"]["code"] == "engine_unavailable"


def test_should_retry_header() -> None:
    """should_retry=False tells the OpenAI SDK not to retry."""
    response = error_response(RateLimitError("too big", retry_after=1, should_retry=False))
    assert response.headers["x-should-retry"] == "false"


def test_authentication_error_challenges_bearer() -> None:
    """401 carries WWW-Authenticate: Bearer."""
    assert error_response(AuthenticationError("no")).headers["WWW-Authenticate"] == "Bearer"


def test_sse_event_is_one_data_line() -> None:
    """The SSE mapping is one 'data:' event holding the same envelope."""
    event = error_sse_event(ContextLengthExceededError("long", param="messages"))
    assert event.startswith(b"data: ") and event.endswith(b"\n\n")
    body = json.loads(event[6:])
    assert body["error"]["param"] == "messages"
    assert body["error"]["code"] == "context_length_exceeded"
