"""Legacy completions: a list of prompts, ``n`` choices each, indexed ``prompt * n + i``."""

from __future__ import annotations

from collections.abc import AsyncIterator

from app.errors import GatewayError, error_sse_event
from app.schemas.openai import CompletionRequest
from app.services import formatting as fmt
from app.services.cancellation import DisconnectWaiter
from app.services.generation import Caller, GenerationService, JobResult, OpenStream, Reply, leased
from app.services.lease import RequestLease


async def completion(
    service: GenerationService,
    caller: Caller,
    req: CompletionRequest,
    disconnected: DisconnectWaiter,
) -> Reply:
    """Validate, admit and run a completions request (one lease for all its prompts)."""
    model = service.check_model(req.model, caller.principal)
    prompts = req.prompts()
    service.check_n(req.n, len(prompts))
    head = service.head("cmpl", model)
    jobs, echoes = [], []
    for i, prompt in enumerate(prompts):
        ids = await service.encode_prompt(prompt) if isinstance(prompt, str) else prompt
        rid = f"{head.id}-{i}"
        jobs.append(service.prepare(rid, ids, req.max_tokens, req.to_sampling_options, "prompt"))
        echoes.append(_echo(service, req, prompt))
    lease = await service.admit(caller, jobs, model, req.priority, req.timeout)
    headers = lease.charge.headers()
    if req.stream:
        streams = await service.open_streams(jobs, lease)
        return Reply(headers, events=_events(head, streams, lease, req, echoes))
    results = await service.collect(jobs, lease, disconnected)
    return Reply(headers, body=_body(head, results, req, echoes))


def _echo(service: GenerationService, req: CompletionRequest, prompt: str | list[int]) -> str:
    if not req.echo:
        return ""
    return prompt if isinstance(prompt, str) else service.engine.decode(prompt)


def _body(
    head: fmt.ResponseHead, results: list[JobResult], req: CompletionRequest, echoes: list[str]
) -> dict:
    choices, prefixes = [], []
    for p, result in enumerate(results):
        for choice in result.choices:
            choice.index = p * req.n + choice.index
            choices.append(choice)
            prefixes.append(echoes[p])
    prompt_tokens = sum(r.prompt_tokens for r in results)
    return fmt.completion(head, choices, prompt_tokens, req.logprobs is not None, prefixes)


async def _events(
    head: fmt.ResponseHead,
    streams: list[OpenStream],
    lease: RequestLease,
    req: CompletionRequest,
    echoes: list[str],
) -> AsyncIterator[bytes]:
    offsets: dict[int, int] = {}
    try:
        async for p, step in leased(streams, lease):
            for delta in step.choices:
                index = p * req.n + delta.index
                prefix = echoes[p] if index not in offsets else ""
                offset = offsets.get(index, 0) + len(prefix)
                offsets[index] = offset + len(delta.text)
                logprobs = (
                    fmt.completion_logprobs(delta.logprobs, offset)
                    if req.logprobs is not None
                    else None
                )
                chunk = fmt.completion_chunk(
                    head, index, prefix + delta.text, delta.finish_reason, logprobs
                )
                yield fmt.sse(chunk)
        if req.include_usage:
            usage = fmt.usage_chunk(
                head, "text_completion", lease.prompt_tokens, lease.completion_tokens
            )
            yield fmt.sse(usage)
    except GatewayError as exc:
        yield error_sse_event(exc)
    yield fmt.SSE_DONE
