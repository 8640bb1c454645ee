"""The pipeline routes' short way in, past the framework's layers.

A generation request taken by Starlette and FastAPI passes ServerErrorMiddleware,
ExceptionMiddleware, FastAPI's exit-stack middleware, the router, dependency solving and a
second exception wrapper, and every chunk of its stream goes back out through three
``send`` wrappers that do nothing for it: a :class:`~app.api.pipeline_response.PipelineResponse`
answers its own errors, in OpenAI's envelope, before and after its first byte. Measured
with ``python -m loadtest.relay_cost`` (see docs/performance.md), that way cost the relay
about a tenth of its CPU.

So ``POST`` to a route whose handler is a :func:`pipeline_endpoint` goes straight to the
handler, behind the same outer middleware as every other request (request context and
metrics, body limit), with ``scope["route"]`` set as the router would (metrics label by
it). Every other request, and every other method on those paths, takes the framework's
way; the routes stay in the OpenAPI schema as they are.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

PipelineHandler = Callable[[Any], Awaitable[Response]]
_PIPELINE_HANDLERS: set[Callable[..., Any]] = set()


def pipeline_endpoint(handler: PipelineHandler) -> PipelineHandler:
    """Marks a route handler that takes only the pipeline and returns a
    ``PipelineResponse``: it may be called without the framework."""
    _PIPELINE_HANDLERS.add(handler)
    return handler


class _Lane:
    """Calls one pipeline route's handler as the router and FastAPI would."""

    def __init__(self, route: APIRoute) -> None:
        self.route = route

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["route"] = self.route
        response = await self.route.endpoint(scope["app"].state.gateway.pipeline)
        await response(scope, receive, send)


class GatewayApp(FastAPI):
    """FastAPI, with :meth:`open_fast_lanes` for the pipeline routes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lanes: dict[str, ASGIApp] = {}

    def open_fast_lanes(self, outer: Callable[[ASGIApp], ASGIApp]) -> None:
        """Route ``POST`` to every pipeline route through ``outer`` (the app's own outer
        middleware, wrapped around the handler) alone. Call once the routes are in."""
        self._lanes = {
            route.path: outer(_Lane(route))
            for route in self.routes
            if isinstance(route, APIRoute)
            and route.endpoint in _PIPELINE_HANDLERS
            and route.methods == {"POST"}
        }

    @property
    def fast_lane_paths(self) -> frozenset[str]:
        return frozenset(self._lanes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and not self.root_path:
            lane = self._lanes.get(scope["path"])
            if lane is not None:
                scope["app"] = self
                await lane(scope, receive, send)
                return
        await super().__call__(scope, receive, send)
