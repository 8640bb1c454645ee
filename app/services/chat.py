"""Chat completions on top of :class:`GenerationService`: one prompt, ``n`` choices."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from app.engine.protocol import EngineStep
from app.errors import GatewayError, error_sse_event
from app.schemas.openai import ChatCompletionRequest
from app.services import formatting as fmt
from app.services.cancellation import DisconnectWaiter
from app.services.generation import GenerationService, Job

CHUNK = "chat.completion.chunk"


def _prepare(
    service: GenerationService, req: ChatCompletionRequest
) -> tuple[fmt.ResponseHead, Job]:
    model = service.check_model(req.model)
    service.check_n(req.n)
    prompt_ids = service.engine.encode_chat(req.chat_messages())
    head = service.head("chatcmpl", model)
    job = service.prepare(
        head.id, prompt_ids, req.requested_max_tokens, req.to_sampling_options, "messages"
    )
    return head, job


async def create_chat_completion(
    service: GenerationService, req: ChatCompletionRequest, disconnected: DisconnectWaiter
) -> dict[str, Any]:
    head, job = _prepare(service, req)
    (result,) = await service.collect([job], disconnected)
    return fmt.chat_completion(head, result.choices, result.prompt_tokens, req.logprobs)


async def stream_chat_completion(
    service: GenerationService, req: ChatCompletionRequest
) -> AsyncIterator[bytes]:
    """Validate and start generating; the returned stream owns the engine request."""
    head, job = _prepare(service, req)
    steps = await service.open_stream(job)
    return _events(head, steps, req, len(job.prompt_ids))


async def _events(
    head: fmt.ResponseHead,
    steps: AsyncIterator[EngineStep],
    req: ChatCompletionRequest,
    prompt_tokens: int,
) -> AsyncIterator[bytes]:
    include_usage, completion_tokens = req.include_usage, 0
    try:
        for index in range(req.n):
            yield fmt.sse(fmt.chat_role_chunk(head, index))
        async for step in steps:
            for delta in step.choices:
                completion_tokens += delta.num_tokens
                if delta.text or delta.finish_reason or delta.logprobs:
                    yield fmt.sse(fmt.chat_chunk(head, delta, req.logprobs))
        # Other chunks omit "usage": OpenAI's schema types it as an object, not nullable.
        if include_usage:
            yield fmt.sse(fmt.usage_chunk(head, CHUNK, prompt_tokens, completion_tokens))
    except GatewayError as exc:
        yield error_sse_event(exc)
    yield fmt.SSE_DONE
