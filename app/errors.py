"""One error hierarchy for the gateway, mapped once to JSON and once to SSE.

Every failure a client can see is a :class:`GatewayError`, rendered in OpenAI's envelope
``{"error": {"message", "type", "param", "code"}}``::

    GatewayError (500, server_error)
    ├── InvalidRequestError (400, invalid_request_error)
    │   └── ContextLengthExceededError (400, code=context_length_exceeded)
    ├── AuthenticationError (401, WWW-Authenticate: Bearer)
    ├── PermissionDeniedError (403)
    ├── NotFoundError (404; ModelNotFoundError: code=model_not_found)
    ├── PayloadTooLargeError (413)
    ├── RateLimitError (429, Retry-After)
    ├── ClientDisconnectedError (499, nginx's: the client left before the answer)
    ├── ServiceUnavailableError (503, Retry-After)
    │   └── EngineUnavailableError (503, code=engine_unavailable)
    └── GatewayTimeoutError (504)

``retry_after`` (seconds) becomes ``Retry-After`` and ``retry-after-ms`` headers, which the
OpenAI SDK honours; ``should_retry=False`` adds ``x-should-retry: false`` where retrying
cannot help. Rendering (a JSON response, a final SSE event) lives in :mod:`app.api.errors`.
"""

from __future__ import annotations

import math
from typing import Any


class GatewayError(Exception):
    """Base: an error with an HTTP status and an OpenAI error body."""

    status: int = 500
    type: str = "server_error"
    default_code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after: float | None = None,
        should_retry: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code or self.default_code
        self.retry_after = retry_after
        self.should_retry = should_retry

    def body(self) -> dict[str, Any]:
        """OpenAI's error envelope."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def headers(self) -> dict[str, str]:
        """Retry hints the OpenAI SDK understands."""
        headers: dict[str, str] = {}
        if self.retry_after is not None:
            seconds = max(self.retry_after, 0.0)
            headers["Retry-After"] = str(max(1, math.ceil(seconds)))
            headers["retry-after-ms"] = str(math.ceil(seconds * 1000))
        if self.should_retry is not None:
            headers["x-should-retry"] = "true" if self.should_retry else "false"
        return headers


class InvalidRequestError(GatewayError):
    status = 400
    type = "invalid_request_error"


class ContextLengthExceededError(InvalidRequestError):
    default_code = "context_length_exceeded"


class AuthenticationError(GatewayError):
    status = 401
    type = "authentication_error"
    default_code = "invalid_api_key"

    def headers(self) -> dict[str, str]:
        return {**super().headers(), "WWW-Authenticate": "Bearer"}


class PermissionDeniedError(GatewayError):
    status = 403
    type = "permission_error"


class NotFoundError(GatewayError):
    status = 404
    type = "invalid_request_error"
    default_code = "not_found"


class ModelNotFoundError(NotFoundError):
    default_code = "model_not_found"


class PayloadTooLargeError(GatewayError):
    status = 413
    type = "invalid_request_error"
    default_code = "request_too_large"


class RateLimitError(GatewayError):
    status = 429
    type = "rate_limit_error"
    default_code = "rate_limit_exceeded"


class ClientDisconnectedError(GatewayError):
    """The client closed the connection before the response was done (nginx's 499)."""

    status = 499
    type = "client_closed_request"
    default_code = "client_disconnected"


class ServiceUnavailableError(GatewayError):
    status = 503
    type = "service_unavailable"
    default_code = "service_unavailable"


class EngineUnavailableError(ServiceUnavailableError):
    default_code = "engine_unavailable"


class RouteError(GatewayError):
    """Starlette's own HTTP errors (e.g. 405), re-shaped."""

    type = "invalid_request_error"

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class GatewayTimeoutError(GatewayError):
    status = 504
    type = "timeout_error"
    default_code = "timeout"
    # True when the client's own ``timeout`` (shorter than the server's cap) expired.
    client_chosen = False
