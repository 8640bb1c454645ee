"""Legacy completions: a list of prompts, ``n`` choices each, indexed ``prompt * n + i``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from app.engine.protocol import EngineStep
from app.errors import GatewayError, error_sse_event
from app.schemas.openai import CompletionRequest
from app.services import formatting as fmt
from app.services.cancellation import DisconnectWaiter
from app.services.generation import GenerationService, Job
from app.services.streams import merge_streams


def _prepare(
    service: GenerationService, req: CompletionRequest
) -> tuple[fmt.ResponseHead, list[Job], list[str]]:
    model = service.check_model(req.model)
    prompts = req.prompts()
    service.check_n(req.n, len(prompts))
    head = service.head("cmpl", model)
    jobs, echoes = [], []
    for i, prompt in enumerate(prompts):
        ids = service.engine.encode_prompt(prompt) if isinstance(prompt, str) else prompt
        rid = f"{head.id}-{i}"
        jobs.append(service.prepare(rid, ids, req.max_tokens, req.to_sampling_options, "prompt"))
        echoes.append(_echo(service, req, prompt))
    return head, jobs, echoes


def _echo(service: GenerationService, req: CompletionRequest, prompt: str | list[int]) -> str:
    if not req.echo:
        return ""
    return prompt if isinstance(prompt, str) else service.engine.decode(prompt)


async def create_completion(
    service: GenerationService, req: CompletionRequest, disconnected: DisconnectWaiter
) -> dict[str, Any]:
    head, jobs, echoes = _prepare(service, req)
    results = await service.collect(jobs, disconnected)
    choices, prefixes = [], []
    for p, result in enumerate(results):
        for choice in result.choices:
            choice.index = p * req.n + choice.index
            choices.append(choice)
            prefixes.append(echoes[p])
    prompt_tokens = sum(r.prompt_tokens for r in results)
    return fmt.completion(head, choices, prompt_tokens, req.logprobs is not None, prefixes)


async def stream_completion(
    service: GenerationService, req: CompletionRequest
) -> AsyncIterator[bytes]:
    """Validate and start every prompt; the returned stream owns the engine requests."""
    head, jobs, echoes = _prepare(service, req)
    streams = []
    try:
        for job in jobs:
            streams.append(await service.open_stream(job))
    except BaseException:
        for stream in streams:
            await stream.aclose()  # type: ignore[attr-defined]
        raise
    prompt_tokens = sum(len(job.prompt_ids) for job in jobs)
    return _events(head, merge_streams(streams), req, echoes, prompt_tokens)


async def _events(
    head: fmt.ResponseHead,
    steps: AsyncIterator[tuple[int, EngineStep]],
    req: CompletionRequest,
    echoes: list[str],
    prompt_tokens: int,
) -> AsyncIterator[bytes]:
    completion_tokens, offsets = 0, {}
    try:
        async for p, step in steps:
            for delta in step.choices:
                index = p * req.n + delta.index
                completion_tokens += delta.num_tokens
                prefix = echoes[p] if index not in offsets else ""
                offset = offsets.get(index, 0)
                offsets[index] = offset + len(prefix) + len(delta.text)
                logprobs = (
                    fmt.completion_logprobs(delta.logprobs, offset + len(prefix))
                    if req.logprobs is not None
                    else None
                )
                text = prefix + delta.text
                yield fmt.sse(
                    fmt.completion_chunk(head, index, text, delta.finish_reason, logprobs)
                )
        if req.include_usage:
            usage = fmt.usage_chunk(head, "text_completion", prompt_tokens, completion_tokens)
            yield fmt.sse(usage)
    except GatewayError as exc:
        yield error_sse_event(exc)
    yield fmt.SSE_DONE
