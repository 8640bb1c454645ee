"""``OpenAIDeployment`` against a real upstream on loopback (uvicorn on the test's own loop):
which failed sends it tries once more, and how its health checks re-admit an open breaker."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import uvicorn

from app.deployments.base import (
    BadUpstreamError,
    DeploymentState,
    UpstreamError,
    UpstreamTimeoutError,
)
from app.deployments.openai import OpenAIDeployment
from app.engine.protocol import EmbeddingJob, Job, SamplingOptions, TokenPrompt
from app.resilience.breaker import EngineBreaker, is_client_error
from app.resilience.errors import OverloadedError
from app.routing.catalog import OpenAIDeploymentSpec
from tests.support.upstreams import broken_upstream


@contextlib.asynccontextmanager
async def upstream(how: str) -> AsyncIterator[str]:
    """``broken_upstream`` answering as ``how``, served on this loop; its base URL."""
    listening = socket.socket()  # bound before serving: connects queue until it accepts
    listening.bind(("127.0.0.1", 0))
    listening.listen()
    server = uvicorn.Server(uvicorn.Config(broken_upstream({"how": how}), log_level="warning"))
    serving = asyncio.create_task(server.serve(sockets=[listening]))
    try:
        yield f"http://127.0.0.1:{listening.getsockname()[1]}/v1"
    finally:
        server.should_exit = True
        await serving
        listening.close()


def remote(base_url: str, **fields: Any) -> OpenAIDeployment:
    spec = OpenAIDeploymentSpec(name="remote", kind="openai", base_url=base_url, **fields)
    breaker = EngineBreaker(fail_max=2, reset_timeout_s=60, name="remote")
    return OpenAIDeployment(DeploymentState("remote", "m", "openai", breaker), spec)


def job() -> Job:
    return Job("req-1", TokenPrompt([1, 2]), [1, 2], SamplingOptions(max_tokens=2), priority=5)


async def text_of(deployment: OpenAIDeployment) -> str:
    return "".join([c.text async for step in deployment.generate(job()) for c in step.choices])


def test_a_connect_timed_out_by_the_gateways_own_stall_is_sent_once_more(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The loop stalls (a starved CPU) with a connect pending: the connect timer fires 0.7 s
    late, although the kernel had connected. Not the upstream's fault: sent once more, and
    answered."""

    async def scenario() -> str:
        async with upstream("ok") as url:
            deployment = remote(url, connect_timeout_s=0.3)
            answer = asyncio.create_task(text_of(deployment))
            asyncio.get_running_loop().call_soon(time.sleep, 1.0)  # once the connect is issued
            try:
                return await answer
            finally:
                await deployment.stop()

    with caplog.at_level("INFO", logger="app.deployments.openai"):
        assert asyncio.run(scenario()) == "hi"
    assert "event loop stalled" in caplog.text


def test_stalled_out_twice_is_the_gateways_overload_which_the_breaker_does_not_count() -> None:
    """The loop stalls at the first connect and again at the second: a 503 ``overloaded``
    with Retry-After, which the deployment's breaker takes as neutral (not its failure)."""

    class StallAgain(logging.Handler):  # the second stall, as the request is sent again
        def emit(self, record: logging.LogRecord) -> None:
            if "sending once more" in record.getMessage():
                asyncio.get_running_loop().call_soon(time.sleep, 1.0)

    async def scenario() -> OverloadedError:
        async with upstream("ok") as url:
            deployment = remote(url, connect_timeout_s=0.3, keepalive_s=0.05)
            await deployment.start()  # its loop-stall monitor runs from here
            await asyncio.sleep(0.2)  # the health check's connection is closed: a new connect
            answer = asyncio.create_task(text_of(deployment))
            asyncio.get_running_loop().call_soon(time.sleep, 1.0)
            try:
                with pytest.raises(OverloadedError) as refused:
                    await answer
                return refused.value
            finally:
                await deployment.stop()

    handler, logger = StallAgain(), logging.getLogger("app.deployments.openai")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        error = asyncio.run(scenario())
    finally:
        logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)
    assert error.status == 503 and error.code == "overloaded" and error.retry_after == 1.0
    assert "event loop stalled" in error.message
    assert is_client_error(error)  # neutral to the breaker


def test_a_connect_that_times_out_on_time_is_the_upstreams_and_not_sent_again() -> None:
    """An upstream whose accept queue is full (it takes no new connection): the connect
    times out on time, which is the upstream's failure: one try, 504-class error."""

    async def scenario() -> float:
        with socket.socket() as full:
            full.bind(("127.0.0.1", 0))
            full.listen(0)
            port = full.getsockname()[1]
            with socket.create_connection(("127.0.0.1", port)):  # fills the queue
                deployment = remote(f"http://127.0.0.1:{port}/v1", connect_timeout_s=0.3)
                started = time.monotonic()
                try:
                    with pytest.raises(UpstreamTimeoutError):
                        await text_of(deployment)
                    return time.monotonic() - started
                finally:
                    await deployment.stop()

    took = asyncio.run(scenario())
    assert 0.3 <= took < 0.55  # one connect timeout, not two


def test_a_passing_health_check_lets_an_open_breaker_try_at_once() -> None:
    """Failures open the breaker (reset timeout 60 s); the upstream answers a health check
    begun after that: the next request is the trial, and its success closes the breaker."""

    async def scenario() -> None:
        async with upstream("ok") as url:
            deployment = remote(url)
            breaker = deployment.state.breaker
            try:
                for _ in range(2):
                    breaker.admit().record_failure(UpstreamError("boom"))
                assert breaker.state == "open" and not deployment.state.available()
                assert breaker.retry_after() > 50
                assert await deployment.check_health()
                assert deployment.state.available()
                with breaker.admit() as permit:
                    assert permit.trial
                    assert await text_of(deployment) == "hi"
                assert breaker.state == "closed"
            finally:
                await deployment.stop()

    asyncio.run(scenario())


def test_an_upstream_5xx_without_retry_after_still_tells_the_client_when_to_retry() -> None:
    """A 500 with no Retry-After: the deployment's error (what the client gets when no other
    deployment is left) carries Retry-After 1; a 429's own hint is kept."""

    async def refusal(how: str) -> UpstreamError:
        async with upstream(how) as url:
            deployment = remote(url)
            try:
                with pytest.raises(UpstreamError) as refused:
                    await text_of(deployment)
                return refused.value
            finally:
                await deployment.stop()

    error = asyncio.run(refusal("error500"))
    assert error.status == 503 and error.headers()["Retry-After"] == "1"
    busy = asyncio.run(refusal("busy429"))
    assert busy.retry_after == 7.0 and busy.headers()["Retry-After"] == "7"


def test_embeddings_come_back_in_input_order_and_bad_answers_are_the_upstreams() -> None:
    """One ``POST /embeddings`` for every input (the gateway's token ids): vectors in input
    order whatever order the upstream lists them in; a 200 that is not JSON is a 502, a
    500 a retryable 503."""
    jobs = [
        EmbeddingJob(f"e-{i}", TokenPrompt(ids), ids, None, 5)
        for i, ids in enumerate(([7, 8, 9], [4], [1, 2]))
    ]

    async def embed(how: str) -> list[list[float]]:
        async with upstream(how) as url:
            deployment = remote(url)
            try:
                return await deployment.embed(jobs)
            finally:
                await deployment.stop()

    assert asyncio.run(embed("ok")) == [[3.0, 7.0], [1.0, 4.0], [2.0, 1.0]]
    with pytest.raises(BadUpstreamError):
        asyncio.run(embed("garbage"))
    with pytest.raises(UpstreamError) as failed:
        asyncio.run(embed("error500"))
    assert failed.value.status == 503 and failed.value.retryable
