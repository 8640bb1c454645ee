"""The seed project's simple endpoints: ``/v1/generate`` (JSON) and ``/v1/stream`` (SSE)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from app.engine.protocol import EngineStep
from app.errors import GatewayError, error_sse_event
from app.schemas.openai import SimpleGenerateRequest
from app.services import formatting as fmt
from app.services.cancellation import DisconnectWaiter
from app.services.generation import GenerationService, Job


def _prepare(
    service: GenerationService, req: SimpleGenerateRequest, stream: bool
) -> tuple[fmt.ResponseHead, Job]:
    model = service.check_model(req.model)
    head = service.head("gen", model)
    ids = service.engine.encode_prompt(req.prompt)
    job = service.prepare(
        head.id, ids, req.max_tokens, lambda m: req.to_sampling_options(m, stream), "prompt"
    )
    return head, job


async def generate_text(
    service: GenerationService, req: SimpleGenerateRequest, disconnected: DisconnectWaiter
) -> dict[str, Any]:
    head, job = _prepare(service, req, stream=False)
    (result,) = await service.collect([job], disconnected)
    choice = result.choices[0]
    return {
        "id": head.id,
        "model": head.model,
        "text": choice.text,
        "finish_reason": choice.finish_reason or "stop",
        "usage": fmt.usage(result.prompt_tokens, choice.num_tokens),
    }


async def stream_text(
    service: GenerationService, req: SimpleGenerateRequest
) -> AsyncIterator[bytes]:
    head, job = _prepare(service, req, stream=True)
    return _events(head, await service.open_stream(job))


async def _events(head: fmt.ResponseHead, steps: AsyncIterator[EngineStep]) -> AsyncIterator[bytes]:
    try:
        async for step in steps:
            for delta in step.choices:
                yield fmt.sse(
                    {"id": head.id, "text": delta.text, "finish_reason": delta.finish_reason}
                )
    except GatewayError as exc:
        yield error_sse_event(exc)
    yield fmt.SSE_DONE
