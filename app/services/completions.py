"""``/v1/completions`` on the pipeline: a list of prompts, ``n`` choices each, indexed
``prompt * n + i``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from app.config import ServerSettings
from app.engine.protocol import EngineStep
from app.errors import InvalidRequestError
from app.routing.router import ModelRoute
from app.schemas import logit_bias
from app.schemas.openai import CompletionRequest
from app.services import formatting as fmt
from app.services.chat import check_n
from app.services.endpoint import Chunk, Job, JobResult, Prompt, TextPrompt, TokenPrompt

OBJECT = "text_completion"


class CompletionEndpoint:
    """``/v1/completions`` (the model's vocabulary bounds ``logit_bias``)."""

    request_model = CompletionRequest
    id_prefix = "cmpl"
    prompt_param = "prompt"

    def precheck(self, data: Mapping[str, Any], server: ServerSettings) -> None:
        logit_bias.check_count(data)
        prompt, limit = data.get("prompt"), server.max_prompts_per_request
        if not isinstance(prompt, list) or not prompt or isinstance(prompt[0], int):
            return  # one prompt: text, or a list of token ids
        if len(prompt) > limit:
            raise InvalidRequestError(f"At most {limit} prompts per request.", param="prompt")

    def streams(self, req: CompletionRequest) -> bool:
        return req.stream

    def prompts(
        self, req: CompletionRequest, server: ServerSettings, route: ModelRoute
    ) -> list[Prompt]:
        check_n(req.n, server)
        logit_bias.check_in_vocabulary(req.token_biases, route.tokenizer.vocab_size)
        return [
            TextPrompt(prompt) if isinstance(prompt, str) else TokenPrompt(prompt)
            for prompt in req.prompts()
        ]

    def body(
        self,
        head: fmt.ResponseHead,
        req: CompletionRequest,
        results: list[JobResult],
        route: ModelRoute,
    ) -> Chunk:
        echoes = [_echo(req, result.job, route) for result in results]
        choices, prefixes = [], []
        for p, result in enumerate(results):
            for choice in result.choices:
                choice.index = p * req.n + choice.index
                choices.append(choice)
                prefixes.append(echoes[p])
        prompt_tokens = sum(r.prompt_tokens for r in results)
        return fmt.completion(
            head, choices, prompt_tokens, req.logprobs is not None, prefixes, req.return_token_ids
        )

    def formatter(
        self, head: fmt.ResponseHead, req: CompletionRequest, jobs: list[Job], route: ModelRoute
    ) -> CompletionStream:
        return CompletionStream(head, req, [_echo(req, job, route) for job in jobs])


def _echo(req: CompletionRequest, job: Job, route: ModelRoute) -> str:
    if not req.echo:
        return ""
    prompt = job.prompt
    return prompt.text if isinstance(prompt, TextPrompt) else route.tokenizer.decode(job.prompt_ids)


class CompletionStream:
    """A chunk per choice that advanced, its echo first; text offsets for logprobs."""

    __slots__ = ("echoes", "head", "include_usage", "logprobs", "n", "offsets", "token_ids")

    def __init__(self, head: fmt.ResponseHead, req: CompletionRequest, echoes: list[str]):
        self.head, self.n, self.echoes = head, req.n, echoes
        self.logprobs, self.include_usage = req.logprobs is not None, req.include_usage
        self.token_ids = req.return_token_ids
        self.offsets: dict[int, int] = {}

    def opening(self) -> list[Chunk]:
        return []

    def step(self, p: int, step: EngineStep) -> list[Chunk]:
        chunks = []
        for delta in step.choices:
            index = p * self.n + delta.index
            prefix = self.echoes[p] if index not in self.offsets else ""
            offset = self.offsets.get(index, 0) + len(prefix)
            self.offsets[index] = offset + len(delta.text)
            logprobs = fmt.completion_logprobs(delta.logprobs, offset) if self.logprobs else None
            chunk = fmt.completion_chunk(
                self.head, index, prefix + delta.text, delta.finish_reason, logprobs
            )
            if self.token_ids:
                chunk["choices"][0]["token_ids"] = list(delta.token_ids or ())
            chunks.append(chunk)
        return chunks

    def closing(self, prompt_tokens: int, completion_tokens: int) -> list[Chunk]:
        if not self.include_usage:
            return []
        return [fmt.usage_chunk(self.head, OBJECT, prompt_tokens, completion_tokens)]
