"""``OpenAIDeployment``: a remote OpenAI-compatible server, proxied with one pooled aiohttp
session per deployment (HTTP keep-alive, no client per request).

aiohttp, not httpx: its C parser costs less per streamed event than h11, its reads return
everything buffered (a relay that falls behind takes several events per read and writes
them to its client at once, see :mod:`app.deployments.sse`), and read directly, without
httpx's response iterators on top (which were measured at 12 ms of CPU per 1k relayed
tokens, a fifth of the relay: ``python -m loadtest.relay_cost``). Proxy environment
variables are not applied to upstream calls.

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
import orjson

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
        self._base_url = spec.base_url.rstrip("/")
        self._headers = _headers(spec)
        # A connect waits for a pooled slot and connects within ``timeout_s``; the connect
        # itself has ``connect_timeout_s``; a stream may be silent for ``timeout_s``.
        self._timeout = aiohttp.ClientTimeout(
            total=None,
            connect=spec.timeout_s + spec.connect_timeout_s,
            sock_connect=spec.connect_timeout_s,
            sock_read=spec.timeout_s,
        )
        self._session: aiohttp.ClientSession | None = None  # made on the loop, at first use
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
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _pool(self) -> aiohttp.ClientSession:
        """The deployment's one session (its connection pool), made on first use."""
        if self._session is None or self._session.closed:
            spec = self.spec
            connector = aiohttp.TCPConnector(
                limit=spec.max_connections, keepalive_timeout=spec.keepalive_s
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                headers=self._headers,
                timeout=self._timeout,
                auto_decompress=False,
            )
        return self._session

    async def check_health(self) -> bool:
        health = self.spec.health
        began = self.state.breaker.now()
        timeout = aiohttp.ClientTimeout(total=health.timeout_s)
        try:
            async with self._pool().get(_root(self._base_url) + health.path, timeout=timeout) as r:
                ok = 200 <= r.status < 300
                await r.read()  # to the end: the connection goes back to the pool
        except (aiohttp.ClientError, TimeoutError):
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
        body = orjson.dumps(request_body(job, self.upstream_model, spec.send, spec.priority))
        parse = chat_step if path == "/chat/completions" else completion_step
        try:
            response = await self._send(path, body)
            try:
                if response.status != 200:
                    raise await self._refusal(response)
                async for step in self._steps(response, parse):
                    yield step
            finally:
                response.release()  # back to the pool when read to its end; else closed
        except aiohttp.ClientError as exc:
            raise _unreachable(exc, self.state.name) from exc
        except StreamCutError as exc:
            raise BadUpstreamError(f"Deployment {self.state.name} cut its stream: {exc}") from exc

    async def embed(self, jobs: list[EmbeddingJob]) -> list[list[float]]:
        """One ``POST /embeddings`` for every input: the gateway's token ids, or with
        ``send: request`` the texts (when every input is one)."""
        body = orjson.dumps(embedding_body(jobs, self.upstream_model, self.spec.send))
        try:
            response = await self._send("/embeddings", body)
            try:
                if response.status != 200:
                    raise await self._refusal(response)
                content = await response.read()
            finally:
                response.release()
        except aiohttp.ClientError as exc:
            raise _unreachable(exc, self.state.name) from exc
        self.last_progress_at = time.monotonic()
        try:
            return embedding_vectors(_json(content, self.state.name), len(jobs))
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise BadUpstreamError(
                f"Deployment {self.state.name} sent no embedding: {exc!r}"
            ) from exc

    async def _send(self, path: str, body: bytes) -> aiohttp.ClientResponse:
        """The answer's head to ``POST path``; sent once more, on a new connection, when the
        first try failed through no fault of the upstream's. A connect timed out by the
        gateway's own stall twice is the gateway's overload (a 503 the breaker does not
        count), not the deployment's failure."""
        url = self._base_url + path
        for last_try in (False, True):
            mark = self._mark()
            try:
                return await self._pool().post(url, data=body)
            except aiohttp.ClientError as exc:
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
                    extra={"deployment": self.state.name, "error": repr(exc)},
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
        self, response: aiohttp.ClientResponse, parse: Callable[[dict[str, Any]], EngineStep]
    ) -> AsyncIterator[EngineStep]:
        """One step per read: the events a read brought, their deltas in order (a relay
        that falls behind writes them to its client at once; see :mod:`sse`)."""
        counted = 0
        name = self.state.name
        async for batch in sse_batches(response.content.iter_any()):
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

    async def _refusal(self, response: aiohttp.ClientResponse) -> GatewayError:
        raw = await _read_some(response)
        message = _error_message(raw) or f"HTTP {response.status}"
        where = f"Deployment {self.state.name} answered {response.status}: {message}"
        status = response.status
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


def _headers(spec: OpenAIDeploymentSpec) -> dict[str, str]:
    key = spec.api_key()
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    headers["Content-Type"] = "application/json"
    return headers


def _timed_out_by_stall(error: aiohttp.ClientError, stalled_s: float, timeout_s: float) -> bool:
    """A connect timeout while the gateway's loop stalled for ``STALL_FRACTION`` of it.

    asyncio runs a due timer before the task a finished connect wakes, so a loop held up
    past the deadline times out connects the kernel completed long before."""
    timed_out = isinstance(error, aiohttp.ConnectionTimeoutError)
    return timed_out and stalled_s >= STALL_FRACTION * timeout_s


def _dropped_unanswered(error: aiohttp.ClientError) -> bool:
    """The upstream closed the connection before any answer (a pooled one it was closing as
    it was reused: "Server disconnected", or the request could not be written). Sent once
    more, on a new connection; a refused connection is not this, it fails over."""
    if isinstance(error, aiohttp.ClientConnectorError):  # connect() failed: refused, no route
        return False
    return isinstance(error, (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError))


def _unreachable(error: aiohttp.ClientError, name: str) -> UpstreamError:
    """A timeout (connect, read, a pooled slot) is 504; any other transport failure
    (refused, reset, dropped mid-stream) is unreachable."""
    if isinstance(error, aiohttp.ServerTimeoutError):
        return UpstreamTimeoutError(f"Deployment {name} timed out: {error!r}")
    return UpstreamError(f"Deployment {name} is unreachable: {error!r}")


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


async def _read_some(response: aiohttp.ClientResponse) -> bytes:
    raw = b""
    with contextlib.suppress(aiohttp.ClientError):
        while len(raw) < ERROR_BODY_BYTES:
            chunk = await response.content.read(ERROR_BODY_BYTES - len(raw))
            if not chunk:
                break
            raw += chunk
    return raw


def _error_message(raw: bytes) -> str | None:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return str(error.get("message") or "")[:500] or None
    return None


def _retry_after(response: aiohttp.ClientResponse) -> float | None:
    millis = response.headers.get("retry-after-ms")
    seconds = response.headers.get("retry-after")
    try:
        if millis is not None:
            return float(millis) / 1000
        return float(seconds) if seconds is not None else None
    except ValueError:
        return None
