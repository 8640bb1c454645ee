"""Every failure leaves in OpenAI's error envelope: one place installs the handlers."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response

from app.api.errors import as_gateway_error, error_response
from app.errors import GatewayError, NotFoundError, RouteError
from app.observability.context import record_error
from app.services.parsing import validation_error


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(GatewayError, _gateway_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(HTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _unexpected_error)


async def _gateway_error(_: Request, exc: GatewayError) -> Response:
    record_error(exc)
    return error_response(exc)


async def _validation_error(_: Request, exc: RequestValidationError) -> Response:
    """400 (not FastAPI's 422 shape) naming the first offending parameter."""
    error = validation_error(exc.errors(), skip=("body", "query", "path"))
    record_error(error)
    return error_response(error)


async def _http_error(_: Request, exc: HTTPException) -> Response:
    if exc.status_code == 404:
        return error_response(NotFoundError("Unknown route."))
    return error_response(RouteError(str(exc.detail), exc.status_code))


async def _unexpected_error(_: Request, exc: Exception) -> Response:
    return error_response(as_gateway_error(exc))
