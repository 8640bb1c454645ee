"""The seed project's simple endpoints: ``/v1/generate`` (JSON) and ``/v1/stream`` (SSE)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from app.errors import GatewayError, error_sse_event
from app.schemas.openai import SimpleGenerateRequest
from app.services import formatting as fmt
from app.services.cancellation import DisconnectWaiter
from app.services.generation import Caller, GenerationService, OpenStream, Reply, leased
from app.services.lease import RequestLease


async def simple_generation(
    service: GenerationService,
    caller: Caller,
    req: SimpleGenerateRequest,
    disconnected: DisconnectWaiter,
    stream: bool,
) -> Reply:
    model = service.check_model(req.model, caller.principal)
    head = service.head("gen", model)
    ids = await service.encode_prompt(req.prompt)
    job = service.prepare(head.id, ids, req.max_tokens, req.to_sampling_options, "prompt")
    lease = await service.admit(caller, [job], model, req.priority, req.timeout)
    headers = lease.charge.headers()
    if stream:
        (steps,) = await service.open_streams([job], lease)
        return Reply(headers, events=_events(head, steps, lease))
    (result,) = await service.collect([job], lease, disconnected)
    choice = result.choices[0]
    body = {
        "id": head.id,
        "model": head.model,
        "text": choice.text,
        "finish_reason": choice.finish_reason or "stop",
        "usage": fmt.usage(result.prompt_tokens, choice.num_tokens),
    }
    return Reply(headers, body=body)


async def _events(
    head: fmt.ResponseHead, steps: OpenStream, lease: RequestLease
) -> AsyncIterator[bytes]:
    try:
        async for _, step in leased([steps], lease):
            for delta in step.choices:
                event = {"id": head.id, "text": delta.text, "finish_reason": delta.finish_reason}
                yield fmt.sse(event)
    except GatewayError as exc:
        yield error_sse_event(exc)
    yield fmt.SSE_DONE
