"""Translations between the gateway's engine-neutral types and vLLM's.

Kept apart from the manager so that the per-token conversion is small and easy to profile:
it runs once per engine step per request.
"""

from __future__ import annotations

from typing import Any

from vllm import SamplingParams
from vllm.outputs import RequestOutput
from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

from app.engine.protocol import ChoiceDelta, EngineStep, SamplingOptions, TokenLogprob


def to_sampling_params(options: SamplingOptions) -> SamplingParams:
    """Build vLLM's params. Always deltas, streaming or not: no step re-sends old text, and
    every step shows progress, which stall detection and TTFT metrics rely on."""
    return SamplingParams(
        n=options.n,
        max_tokens=options.max_tokens,
        temperature=options.temperature,
        top_p=options.top_p,
        top_k=options.top_k,
        min_p=options.min_p,
        seed=options.seed,
        stop=options.stop or None,
        presence_penalty=options.presence_penalty,
        frequency_penalty=options.frequency_penalty,
        repetition_penalty=options.repetition_penalty,
        min_tokens=options.min_tokens,
        ignore_eos=options.ignore_eos,
        logprobs=options.logprobs,
        logit_bias=options.logit_bias,
        skip_special_tokens=options.skip_special_tokens,
        structured_outputs=_structured_outputs(options),
        output_kind=RequestOutputKind.DELTA,
    )


def _structured_outputs(options: SamplingOptions) -> StructuredOutputsParams | None:
    if options.json_schema is not None:
        return StructuredOutputsParams(json=options.json_schema)
    if options.json_object:
        return StructuredOutputsParams(json_object=True)
    return None


def to_engine_step(output: RequestOutput, top_logprobs: int) -> EngineStep:
    """Convert one vLLM output; with n > 1 a step may carry several choices."""
    choices = [
        ChoiceDelta(
            index=completion.index,
            text=completion.text,
            num_tokens=len(completion.token_ids),
            finish_reason=_finish_reason(completion.finish_reason),
            logprobs=_logprobs(completion.token_ids, completion.logprobs, top_logprobs),
            token_ids=completion.token_ids,
        )
        for completion in output.outputs
    ]
    return EngineStep(choices=choices, finished=output.finished)


def _finish_reason(reason: str | None) -> Any:
    # vLLM says "stop" for EOS and stop strings, "length" for max_tokens; "abort" never
    # reaches a client because we raise on cancellation instead.
    return reason if reason in ("stop", "length") else None


def _logprobs(token_ids: Any, logprobs: Any, k: int) -> list[TokenLogprob] | None:
    if logprobs is None:
        return None
    result = []
    for token_id, candidates in zip(token_ids, logprobs, strict=False):
        chosen = candidates[token_id]
        # vLLM adds the sampled token to the top-k when it ranks below them: keep k.
        ranked = sorted(candidates.values(), key=lambda item: item.rank or 0)[:k]
        top = [(_text(item.decoded_token), item.logprob) for item in ranked]
        result.append(TokenLogprob(_text(chosen.decoded_token), chosen.logprob, top))
    return result


def _text(token: str | None) -> str:
    return token if token is not None else ""
