"""The per-request context: one mutable record per HTTP request, reachable from any code.

:class:`~app.observability.middleware.RequestContextMiddleware` creates a
:class:`RequestContext`, binds it to a contextvar for the request's lifetime and, when the
response is over, logs it as one JSON line and counts it in ``gateway_requests_total``.
Code inside the request fills it in::

    ctx = current_request()          # None outside a request (tests calling services)
    if ctx is not None:
        ctx.key_name = principal.name    # the key's name, never the key
        ctx.fail(exc.status, exc.code, exc.message)

Streaming bodies run in tasks that copy the contextvar, so they see the same object.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import MutableMapping
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from typing import Any

REQUEST_ID_HEADER = "x-request-id"
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
UNKNOWN_ROUTE = "other"

_current: ContextVar[RequestContext | None] = ContextVar("gateway_request", default=None)


def valid_request_id(candidate: str | None) -> str:
    """``candidate`` when it is 1..128 chars of ``[A-Za-z0-9._-]``, else a fresh uuid4 hex.

    Client ids are echoed into headers and logs, so anything else (spaces, CR/LF, quotes)
    is replaced rather than escaped.
    """
    if candidate is not None and _VALID_REQUEST_ID.fullmatch(candidate):
        return candidate
    return uuid.uuid4().hex


@dataclass(slots=True)
class RequestContext:
    """What the request log line and request metrics report; fields left ``None`` are omitted.

    ``status`` is the outcome: the HTTP status, unless the service recorded a failure after
    the 200 was sent (a stream that broke), in which case it is the error's status.
    """

    request_id: str
    method: str = "GET"
    path: str = "/"
    log_prompts: bool = False
    started: float = field(default_factory=time.perf_counter)
    scope: MutableMapping[str, Any] | None = field(default=None, repr=False)
    model: str | None = None
    deployment: str | None = None
    resumed_from: str | None = None
    key_name: str | None = None
    priority: int | None = None
    stream: bool | None = None
    status: int | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    ttft_s: float | None = None
    queue_wait_s: float | None = None
    error_code: str | None = None
    error_reason: str | None = None
    prompt: Any = None
    completion: str | None = None

    @property
    def route(self) -> str:
        """The matched route's template (``/v1/models/{model_id}``), bounded for labels."""
        route = self.scope.get("route") if self.scope is not None else None
        return getattr(route, "path", None) or UNKNOWN_ROUTE

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def fail(self, status: int, code: str | None, reason: str | None = None) -> None:
        """Record the error this request ends with (the first one wins: it is the cause)."""
        if self.error_code is None and self.error_reason is None:
            self.status, self.error_code, self.error_reason = status, code, reason


def current_request() -> RequestContext | None:
    """The context of the request being served, or ``None`` outside one."""
    return _current.get()


def note_request(**fields: Any) -> None:
    """Set fields of the current request's context (no-op outside one)."""
    ctx = _current.get()
    if ctx is not None:
        for name, value in fields.items():
            setattr(ctx, name, value)


def current_request_id() -> str | None:
    ctx = _current.get()
    return ctx.request_id if ctx is not None else None


def bind(ctx: RequestContext) -> Token[RequestContext | None]:
    return _current.set(ctx)


def unbind(token: Token[RequestContext | None]) -> None:
    _current.reset(token)


def record_error(error: Any) -> None:
    """Note a :class:`~app.errors.GatewayError` on the current request (no-op outside one).

    Meant for the error handlers, so that a 4xx/5xx answered before the service ran still
    logs its code and reason.
    """
    ctx = _current.get()
    if ctx is not None:
        code = getattr(error, "code", None) or getattr(error, "type", None)
        ctx.fail(getattr(error, "status", 500), code, getattr(error, "message", str(error)))
