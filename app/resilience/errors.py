"""Errors raised by admission control, as members of the :mod:`app.errors` tree::

    RateLimitError (429)
    └── QueueFullError (code=queue_full): no place left in the queue
    ServiceUnavailableError (503)
    ├── QueueTimeoutError (code=queue_timeout): waited QUEUE_TIMEOUT_S without a slot
    ├── OverloadedError (code=overloaded): estimated wait exceeds the time the request has
    └── ShuttingDownError (code=shutting_down): the gateway is draining

The breaker raises :class:`app.errors.EngineUnavailableError` itself. Each carries
``retry_after`` (seconds) when a useful hint exists.
"""

from __future__ import annotations

from app.errors import RateLimitError, ServiceUnavailableError


class QueueFullError(RateLimitError):
    default_code = "queue_full"


class QueueTimeoutError(ServiceUnavailableError):
    default_code = "queue_timeout"


class OverloadedError(ServiceUnavailableError):
    default_code = "overloaded"


class ShuttingDownError(ServiceUnavailableError):
    default_code = "shutting_down"
