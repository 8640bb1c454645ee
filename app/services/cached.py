"""The response cache in the pipeline: look a planned request up, replay a hit, store a
miss once it completed.

A hit is answered here, after tokenizing and before the token charge (``CACHE_HIT_CHARGE``:
one request of RPM and no TPM, or its tokens too), the queue and the routing: it takes no
slot, no queue place, no engine, and is served while every engine is down. It is replayed
through the endpoint's own formatting, streamed (role chunk, content, finish, usage when
asked, ``[DONE]``) or not, with ``usage.prompt_tokens_details.cached_tokens``.
Every generation response says ``X-Cache: HIT|MISS|BYPASS``; a hit also says ``Age``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from app.auth.keys import Principal
from app.cache.keys import RESPONSE_SHAPING, cache_key
from app.cache.service import CachedAnswer, CachePolicy, ResponseCache
from app.engine.protocol import ChoiceDelta, EngineStep
from app.services.endpoint import Chunk, Endpoint, JobResult, Reply
from app.services.formatting import ChoiceResult

HIT, MISS, BYPASS = "HIT", "MISS", "BYPASS"
OnComplete = Callable[[list[JobResult]], Awaitable[None]]


class CacheStep:
    """The cache's part of one request: its key and policy, the header it earns."""

    def __init__(
        self, cache: ResponseCache | None, plan: Any, principal: Principal, header: str | None
    ):
        self.cache, self.plan = cache, plan
        self.policy = CachePolicy.of(plan.jobs[0].options, header) if cache else None
        self.key = self._key(principal) if self.policy is not None else None
        self.status = BYPASS

    def _key(self, principal: Principal) -> str:
        plan, cache = self.plan, self.cache
        assert cache is not None
        scope = principal.name if cache.settings.cache_scope == "key" else None
        return cache_key(
            endpoint=plan.endpoint_name,
            model=plan.route.id,
            weights=[d.state.weights for d in plan.route.deployments],
            prompt_ids=[job.prompt_ids for job in plan.jobs],
            options=plan.jobs[0].options,
            shaping={name: getattr(plan.req, name, None) for name in RESPONSE_SHAPING},
            scope=scope,
        )

    async def lookup(self) -> CachedAnswer | None:
        if self.cache is None or self.policy is None or self.key is None or not self.policy.lookup:
            if self.cache is not None:
                self.cache.bypassed()
            return None
        found = await self.cache.lookup(self.key)
        if isinstance(found, CachedAnswer):
            self.status = HIT
            return found
        self.status = BYPASS if found else MISS
        return None

    def on_complete(self) -> OnComplete | None:
        """What to call with the results of a miss that completed (None: nothing to store)."""
        cache, key, plan = self.cache, self.key, self.plan
        if cache is None or key is None or self.policy is None or not self.policy.store:
            return None

        async def store(results: list[JobResult]) -> None:
            if plan.answered_by is plan.route:  # a fallback model's answer is not this one's
                await cache.store(key, [r.choices for r in results])

        return store

    def headers(self, hit: CachedAnswer | None = None) -> dict[str, str]:
        headers = {"X-Cache": self.status}
        if hit is not None:
            headers["Age"] = str(int(hit.age_s))
        return headers


def replay(endpoint: Endpoint[Any], plan: Any, hit: CachedAnswer, headers: dict[str, str]) -> Reply:
    """A hit as the endpoint would have answered it."""
    results = [JobResult(job, choices) for job, choices in zip(plan.jobs, hit.jobs, strict=True)]
    prompt_tokens = sum(r.prompt_tokens for r in results)
    if not plan.streaming:
        body = endpoint.body(plan.head, plan.req, results, plan.route)
        _cached_tokens(body, prompt_tokens)
        return Reply(headers, body=body)
    formatter = endpoint.formatter(plan.head, plan.req, plan.jobs, plan.route)
    return Reply(headers, events=_events(formatter, results, prompt_tokens))


async def _events(
    formatter: Any, results: list[JobResult], prompt_tokens: int
) -> AsyncIterator[list[Chunk]]:
    yield formatter.opening()
    completion = 0
    for p, result in enumerate(results):
        deltas = [_delta(choice) for choice in result.choices]
        completion += sum(d.num_tokens for d in deltas)
        yield formatter.step(p, EngineStep(deltas, finished=True))
    closing = formatter.closing(prompt_tokens, completion)
    for chunk in closing:
        _cached_tokens(chunk, prompt_tokens)
    yield closing


def _delta(choice: ChoiceResult) -> ChoiceDelta:
    return ChoiceDelta(
        choice.index, choice.text, choice.num_tokens, choice.finish_reason,  # type: ignore[arg-type]
        choice.logprobs or None, choice.token_ids,
    )  # fmt: skip


def _cached_tokens(body: Chunk, prompt_tokens: int) -> None:
    usage = body.get("usage")
    if isinstance(usage, dict):
        usage["prompt_tokens_details"] = {"cached_tokens": prompt_tokens}
