"""``OpenAIDeployment``: a remote OpenAI-compatible server, proxied with one pooled httpx
client (HTTP keep-alive, no client per request).

The client runs on aiohttp's transport (``httpx-aiohttp``) rather than httpx's own: its C
parser costs less per streamed event than h11, and its reads return everything buffered,
so a relay that falls behind takes several events per read and writes them to its client
at once (see :mod:`app.deployments.sse`). ``python -m loadtest.relay_cost`` measures it.
Proxy environment variables are not applied to upstream calls.

Failures come back as the deployment's errors (see :mod:`app.deployments.base`): refused
or dropped connections, 5xx and 429 are retryable on another deployment (a 429's
``Retry-After`` also cools this one down); other 4xx are the client's; an answer that is
not the protocol (garbage JSON, a stream cut before ``[DONE]``) is 502; a stream silent for
``timeout_s`` is 504. Active health checks run in the background: ``failures`` failed
checks in a row eject the deployment, one success re-admits it; a check begun after the
breaker opened that passes lets the breaker's trial request go at once (a sole deployment
is not refused for the whole reset timeout after a burst of failures).

A request is sent once more, on a new connection, when the failure was not the upstream's:
it dropped the connection unanswered (a pooled connection it was closing), or the connect
timed out while the gateway's own event loop stalled (a starved CPU; measured by
:mod:`app.resilience.loop_stall`). Stalled out twice, the request is a 503 "overloaded"
that the deployment's breaker does not count.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import httpx
import orjson
from httpx_aiohttp import AiohttpTransport

from app.deployments.base import (
    BadUpstreamError,
    DeploymentState,
    UpstreamError,
    UpstreamTimeoutError,
)
from app.deployments.sse import StreamCutError, sse_batches
from app.deployments.wire import (
    chat_step,
    completion_path,
    completion_step,
    embedding_body,
    embedding_vectors,
    request_body,
)
from app.engine.protocol import ChoiceDelta, EmbeddingJob, EngineStep, Job
from app.errors import GatewayError
from app.resilience.errors import OverloadedError
from app.resilience.loop_stall import LoopStallMonitor
from app.routing.catalog import OpenAIDeploymentSpec

log = logging.getLogger(__name__)
ERROR_BODY_BYTES = 16 * 1024  # of an upstream's error answer, read to tell the client why
# A connect timeout is the gateway's own when its loop stalled for this much of the wait
# (the upstream had less than half the time it was given).
STALL_FRACTION = 0.5


class OpenAIDeployment:
    """Runs jobs on ``spec.base_url`` (whose model is ``spec.model`` or ``model_id``)."""

    def __init__(self, state: DeploymentState, spec: OpenAIDeploymentSpec) -> None:
        self.state, self.spec = state, spec
        self.upstream_model = spec.model or state.model_id
        self.last_progress_at = time.monotonic()
        self._client = _client(spec)
        self._checks: asyncio.Task[None] | None = None
        self._failed_checks = 0
        self._stalls: LoopStallMonitor | None = None

    @property
    def ready(self) -> bool:
        return self.state.healthy

    @property
    def ready_in_s(self) -> float | None:
        return None  # its health checks say when; the breaker and cooldown give the hints

    @property
    def resumable(self) -> bool:
        return self.spec.resume == "tokens"

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        self._stalls = LoopStallMonitor.acquire()
        await self.check_health()
        self._checks = asyncio.create_task(self._check_forever(), name=f"health-{self.state.name}")

    async def stop(self) -> None:
        if self._checks is not None:
            self._checks.cancel()
            await asyncio.gather(self._checks, return_exceptions=True)
        if self._stalls is not None:
            self._stalls.release()
            self._stalls = None
        await self._client.aclose()

    async def check_health(self) -> bool:
        health = self.spec.health
        began = self.state.breaker.now()
        try:
            response = await self._client.get(
                _root(self.spec.base_url) + health.path, timeout=health.timeout_s
            )
            ok = response.is_success
        except (httpx.HTTPError, aiohttp.ClientError):
            ok = False
        self._failed_checks = 0 if ok else self._failed_checks + 1
        healthy = ok or self._failed_checks < health.failures
        if healthy != self.state.healthy:
            log.warning(
                "deployment %s",
                "healthy again" if healthy else "ejected: health checks fail",
                extra={"deployment": self.state.name},
            )
        self.state.healthy = healthy
        if ok:  # it answers, since the breaker opened: no need to wait out the reset timeout
            self.state.breaker.allow_trial(evidence_since=began)
        return ok

    async def _check_forever(self) -> None:
        while True:
            await asyncio.sleep(self.spec.health.interval_s)
            await self.check_health()

    # -- generation ----------------------------------------------------------------------------

    async def generate(self, job: Job) -> AsyncIterator[EngineStep]:
        spec = self.spec
        path = completion_path(job, spec.send)
        body = request_body(job, self.upstream_model, spec.send, spec.priority)
        parse = chat_step if path == "/chat/completions" else completion_step
        request = self._client.build_request("POST", path, content=orjson.dumps(body))
        try:
            response = await self._send(request, stream=True)
            try:
                if response.status_code != 200:
                    raise await self._refusal(response)
                async for step in self._steps(response, parse):
                    yield step
            finally:
                await response.aclose()
        except (httpx.HTTPError, aiohttp.ClientError) as exc:
            raise _unreachable(exc, self.state.name) from exc
        except StreamCutError as exc:
            raise BadUpstreamError(f"Deployment {self.state.name} cut its stream: {exc}") from exc

    async def embed(self, jobs: list[EmbeddingJob]) -> list[list[float]]:
        """One ``POST /embeddings`` for every input: the gateway's token ids, or with
        ``send: request`` the texts (when every input is one)."""
        body = embedding_body(jobs, self.upstream_model, self.spec.send)
        request = self._client.build_request("POST", "/embeddings", content=orjson.dumps(body))
        try:
            response = await self._send(request, stream=False)
        except (httpx.HTTPError, aiohttp.ClientError) as exc:
            raise _unreachable(exc, self.state.name) from exc
        if response.status_code != 200:
            raise await self._refusal(response)
        self.last_progress_at = time.monotonic()
        try:
            return embedding_vectors(_json(response.content, self.state.name), len(jobs))
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise BadUpstreamError(
                f"Deployment {self.state.name} sent no embedding: {exc!r}"
            ) from exc

    async def _send(self, request: httpx.Request, stream: bool) -> httpx.Response:
        """``request``'s answer (its headers, when ``stream``); sent once more, on a new
        connection, when the first try failed through no fault of the upstream's. A connect
        timed out by the gateway's own stall twice is the gateway's overload (a 503 the
        breaker does not count), not the deployment's failure."""
        for last_try in (False, True):
            mark = self._mark()
            try:
                return await self._client.send(request, stream=stream)
            except (httpx.HTTPError, aiohttp.ClientError) as exc:
                stalled_s = self._stalled_since(mark)
                stalled = _timed_out_by_stall(exc, stalled_s, self.spec.connect_timeout_s)
                if last_try and stalled:
                    raise OverloadedError(
                        f"The gateway is overloaded: its event loop stalled {stalled_s:.1f} s "
                        f"while connecting to deployment {self.state.name}.",
                        retry_after=1.0,
                    ) from exc
                if last_try or not (stalled or _dropped_unanswered(exc)):
                    raise
                why = (
                    f"the gateway's event loop stalled {stalled_s:.1f} s while connecting"
                    if stalled
                    else "upstream dropped the connection before answering"
                )
                log.info(
                    "%s; sending once more",
                    why,
                    extra={"deployment": self.state.name, "error": repr(exc.__cause__ or exc)},
                )
        raise AssertionError("unreachable")

    def _mark(self) -> tuple[float, float]:
        stalls = self._stalls.stalled_s() if self._stalls is not None else 0.0
        return time.monotonic(), stalls

    def _stalled_since(self, mark: tuple[float, float]) -> float:
        """Seconds of loop stall since ``mark``: the monitor's count, or at least how late
        the connect timer fired (all a deployment that was never started can tell)."""
        began, stalls = mark
        late_s = time.monotonic() - began - self.spec.connect_timeout_s
        counted = self._stalls.stalled_s() - stalls if self._stalls is not None else 0.0
        return max(counted, late_s)

    async def _steps(
        self, response: httpx.Response, parse: Callable[[dict[str, Any]], EngineStep]
    ) -> AsyncIterator[EngineStep]:
        """One step per read: the events a read brought, their deltas in order (a relay
        that falls behind writes them to its client at once; see :mod:`sse`)."""
        counted = 0
        name = self.state.name
        async for batch in sse_batches(response.aiter_bytes()):
            self.last_progress_at = time.monotonic()
            choices: list[ChoiceDelta] = []
            finished = False
            for data in batch:
                chunk = _json(data, name)
                if "error" in chunk:
                    raise _stream_error(chunk["error"], name)
                step = parse(chunk)
                counted += step.num_tokens
                usage = (chunk.get("usage") or {}).get("completion_tokens")
                if usage is not None and usage > counted:  # servers that send no token ids
                    step.choices.append(ChoiceDelta(0, "", usage - counted))
                    counted = usage
                choices += step.choices
                finished = finished or step.finished
            if choices:
                yield EngineStep(choices, finished)

    async def _refusal(self, response: httpx.Response) -> GatewayError:
        raw = await _read_some(response)
        message = _error_message(raw) or f"HTTP {response.status_code}"
        where = f"Deployment {self.state.name} answered {response.status_code}: {message}"
        status = response.status_code
        if status == 429 or status >= 500:
            retry = _retry_after(response)
            if status == 429:
                self.state.cool_down(retry or 1.0, where)
            return UpstreamError(where, retry_after=retry)
        error = GatewayError(message, code=f"upstream_{status}")
        error.status = status if 400 <= status < 500 else 502
        error.type = "invalid_request_error"
        return error

    def describe(self) -> dict[str, Any]:
        return {**self.state.describe(), "base_url": self.spec.base_url, "send": self.spec.send}


def _client(spec: OpenAIDeploymentSpec) -> httpx.AsyncClient:
    key = spec.api_key()
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    headers["Content-Type"] = "application/json"
    timeout = httpx.Timeout(spec.timeout_s, connect=spec.connect_timeout_s)
    limits = httpx.Limits(
        max_connections=spec.max_connections,
        max_keepalive_connections=spec.max_connections,
        keepalive_expiry=spec.keepalive_s,
    )
    return httpx.AsyncClient(
        base_url=spec.base_url,
        headers=headers,
        timeout=timeout,
        transport=AiohttpTransport(limits=limits),
    )


def _timed_out_by_stall(
    error: httpx.HTTPError | aiohttp.ClientError, stalled_s: float, timeout_s: float
) -> bool:
    """A connect timeout while the gateway's loop stalled for ``STALL_FRACTION`` of it.

    asyncio runs a due timer before the task a finished connect wakes, so a loop held up
    past the deadline times out connects the kernel completed long before."""
    timed_out = isinstance(error, httpx.ConnectTimeout) and (
        error.__cause__ is None or isinstance(error.__cause__, TimeoutError)
    )  # httpx-aiohttp reports a refused connect as ConnectTimeout too
    return timed_out and stalled_s >= STALL_FRACTION * timeout_s


def _dropped_unanswered(error: httpx.HTTPError | aiohttp.ClientError) -> bool:
    """The upstream closed the connection before any answer (a pooled one it was closing as
    it was reused: "Server disconnected", or the request could not be written). Sent once
    more, on a new connection; a refused connection is not this, it fails over."""
    cause = error.__cause__ or error
    if isinstance(cause, aiohttp.ClientConnectorError):  # connect() failed: refused, no route
        return False
    return isinstance(cause, (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError))


def _unreachable(error: httpx.HTTPError | aiohttp.ClientError, name: str) -> UpstreamError:
    """A timeout (connect, read, pool) is 504; any other transport failure (refused, reset,
    dropped mid-stream) is unreachable. Judged by aiohttp's own error where there is one:
    httpx-aiohttp maps every connection error, a refused one too, to ``ConnectTimeout``."""
    cause = error.__cause__
    timed_out = isinstance(error, httpx.TimeoutException) and (
        cause is None or isinstance(cause, TimeoutError)
    )
    if timed_out:
        return UpstreamTimeoutError(f"Deployment {name} timed out: {error!r}")
    return UpstreamError(f"Deployment {name} is unreachable: {cause or error!r}")


def _root(base_url: str) -> str:
    """The server's root: health endpoints live beside /v1, not under it."""
    return base_url[: -len("/v1")] if base_url.endswith("/v1") else base_url


def _json(data: bytes, name: str) -> dict[str, Any]:
    try:
        chunk = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise BadUpstreamError(f"Deployment {name} sent an event that is not JSON.") from None
    if not isinstance(chunk, dict):
        raise BadUpstreamError(f"Deployment {name} sent an event that is not an object.")
    return chunk


def _stream_error(error: Any, name: str) -> UpstreamError:
    message = error.get("message") if isinstance(error, dict) else str(error)
    return UpstreamError(f"Deployment {name} failed mid-stream: {message}")


async def _read_some(response: httpx.Response) -> bytes:
    raw = b""
    with contextlib.suppress(httpx.HTTPError):
        async for chunk in response.aiter_raw():
            raw += chunk
            if len(raw) >= ERROR_BODY_BYTES:
                break
    return raw[:ERROR_BODY_BYTES]


def _error_message(raw: bytes) -> str | None:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return str(error.get("message") or "")[:500] or None
    return None


def _retry_after(response: httpx.Response) -> float | None:
    millis = response.headers.get("retry-after-ms")
    seconds = response.headers.get("retry-after")
    try:
        if millis is not None:
            return float(millis) / 1000
        return float(seconds) if seconds is not None else None
    except ValueError:
        return None
