"""Chat completions on top of :class:`GenerationService`: one prompt, ``n`` choices."""

from __future__ import annotations

from collections.abc import AsyncIterator

from app.errors import GatewayError, error_sse_event
from app.schemas.openai import ChatCompletionRequest
from app.services import formatting as fmt
from app.services.cancellation import DisconnectWaiter
from app.services.generation import Caller, GenerationService, OpenStream, Reply, leased
from app.services.lease import RequestLease

CHUNK = "chat.completion.chunk"


async def chat_completion(
    service: GenerationService,
    caller: Caller,
    req: ChatCompletionRequest,
    disconnected: DisconnectWaiter,
) -> Reply:
    """Validate, admit and run one chat request, streaming or not."""
    model = service.check_model(req.model, caller.principal)
    service.check_n(req.n)
    prompt_ids = await service.encode_chat(req.chat_messages())
    head = service.head("chatcmpl", model)
    job = service.prepare(
        head.id, prompt_ids, req.requested_max_tokens, req.to_sampling_options, "messages"
    )
    lease = await service.admit(caller, [job], model, req.priority, req.timeout)
    headers = lease.charge.headers()
    if req.stream:
        (stream,) = await service.open_streams([job], lease)
        return Reply(headers, events=_events(head, stream, lease, req))
    (result,) = await service.collect([job], lease, disconnected)
    body = fmt.chat_completion(head, result.choices, result.prompt_tokens, req.logprobs)
    return Reply(headers, body=body)


async def _events(
    head: fmt.ResponseHead,
    stream: OpenStream,
    lease: RequestLease,
    req: ChatCompletionRequest,
) -> AsyncIterator[bytes]:
    try:
        for index in range(req.n):
            yield fmt.sse(fmt.chat_role_chunk(head, index))
        async for _, step in leased([stream], lease):
            for delta in step.choices:
                if delta.text or delta.finish_reason or delta.logprobs:
                    yield fmt.sse(fmt.chat_chunk(head, delta, req.logprobs))
        # Other chunks omit "usage": OpenAI's schema types it as an object, not nullable.
        if req.include_usage:
            usage = fmt.usage_chunk(head, CHUNK, lease.prompt_tokens, lease.completion_tokens)
            yield fmt.sse(usage)
    except GatewayError as exc:
        yield error_sse_event(exc)
    yield fmt.SSE_DONE
