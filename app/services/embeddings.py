"""``/v1/embeddings`` on the pipeline: the same order as generation, its own admission.

    authenticate (401) → charge the request (429) → read, bound and parse the body (400/413)
    → resolve an embedding model (404, or 400 for a generation model) → tokenize every
      input, each within the model's context and all within EMBEDDING_MAX_TOTAL_TOKENS (400)
    → charge the prompt tokens (429) → the embedding queue (429/503)
    → a deployment, failing over before the answer → the vectors

An embedding request has no stream and no completion: it is paid for by its prompt tokens
once a deployment had it, and cancelling it (a client gone, a deadline) aborts every input
still in the engine.
"""

from __future__ import annotations

from typing import Any

from app.auth.keys import Principal
from app.deployments.base import Deployment
from app.embeddings.encoding import embedding_response
from app.engine.protocol import EmbeddingJob, TextPrompt, TokenPrompt
from app.errors import ContextLengthExceededError, InvalidRequestError
from app.observability.context import note_request
from app.routing.router import ModelRoute
from app.schemas.embeddings import EmbeddingRequest, count_inputs
from app.services.dispatch import first_answer
from app.services.endpoint import Reply
from app.services.pipeline import PipelineRun, maybe_in_thread, request_priority


class EmbeddingRun(PipelineRun[EmbeddingRequest]):
    """One embeddings request; ``async with`` it, then :meth:`start`."""

    request_model = EmbeddingRequest

    async def start(self) -> Reply:
        principal, header_priority = await self._admit_key()
        req, offload = await self._read_request()
        note_request(stream=False)
        route = self.router.resolve(req.model, principal, task="embed")
        self.lease.recorder = self.pipeline.guards.metrics.recorder(route.id)
        priority = request_priority(principal, req.priority, header_priority)
        jobs = await maybe_in_thread(offload, self._jobs, route, req, priority)
        self.lease.prompt_tokens = sum(len(job.prompt_ids) for job in jobs)
        await self._admit(principal, priority)
        route, vectors = await self._answer(route, req, jobs)
        assert self.lease.charge is not None
        body = embedding_response(route.id, vectors, req.encoding_format, self.lease.prompt_tokens)
        return Reply(self.lease.charge.headers(), body=body)

    def _precheck(self, data: dict[str, Any]) -> None:
        """The input count is bounded before the inputs are validated."""
        limit = self.pipeline.settings.embedding.embedding_max_inputs
        if (count := count_inputs(data)) > limit:
            raise InvalidRequestError(
                f"At most {limit} inputs per request; got {count}.", param="input"
            )

    def _jobs(self, route: ModelRoute, req: EmbeddingRequest, priority: int) -> list[EmbeddingJob]:
        """Every input tokenized with the model's tokenizer, each within its context."""
        limit, request_id = route.max_model_len, f"embd-{id(self):x}"
        jobs, total = [], 0
        prompts = req.prompts()
        for i, prompt in enumerate(prompts):
            ids = _tokens(route, prompt)
            if len(ids) > limit:
                raise ContextLengthExceededError(
                    f"This model's maximum context length is {limit} tokens; input[{i}] has "
                    f"{len(ids)}. Shorten or split it.",
                    param="input",
                )
            total += len(ids)
            job_id = request_id if len(prompts) == 1 else f"{request_id}-{i}"
            jobs.append(EmbeddingJob(job_id, prompt, ids, req.dimensions, priority))
        self._check_total(total)
        return jobs

    def _check_total(self, total: int) -> None:
        limit = self.pipeline.settings.embedding.embedding_max_total_tokens
        if total > limit:
            raise InvalidRequestError(
                f"The inputs hold {total} tokens; at most {limit} per request. Send fewer.",
                param="input",
            )

    async def _admit(self, principal: Principal, priority: int) -> None:
        lease, guards = self.lease, self.pipeline.guards
        assert lease.charge is not None
        await self._refusing(principal, lease.charge.reserve(lease.prompt_tokens))
        admission = guards.embedding_admission.acquire(priority, lease.deadline)
        lease.slot = await self._refusing(principal, admission)
        if lease.recorder is not None:
            lease.recorder.admitted(lease.slot.waited_s, priority)

    async def _answer(
        self, route: ModelRoute, req: EmbeddingRequest, jobs: list[EmbeddingJob]
    ) -> tuple[ModelRoute, list[list[float]]]:
        """The first deployment (of the model, then of its fallbacks) that answers."""

        def prepare(candidate: ModelRoute) -> list[EmbeddingJob] | None:
            if candidate is route:
                return jobs
            try:  # a fallback model: its own tokenizer and context length
                return self._jobs(candidate, req, jobs[0].priority)
            except ContextLengthExceededError:
                return None

        async def answer(
            candidate: ModelRoute, deployment: Deployment, own: list[EmbeddingJob]
        ) -> tuple[ModelRoute, list[list[float]]]:
            return candidate, await self._embed(deployment, own)

        attempts = self.router.plan(route, None)
        return await first_answer(self.lease, self.router, route, attempts, prepare, answer)

    async def _embed(self, deployment: Deployment, jobs: list[EmbeddingJob]) -> list[list[float]]:
        self.lease.submitted()
        return await self.lease.guard.wait(deployment.embed(jobs))


def _tokens(route: ModelRoute, prompt: TextPrompt | TokenPrompt) -> list[int]:
    return (
        route.tokenizer.encode_prompt(prompt.text) if isinstance(prompt, TextPrompt) else prompt.ids
    )
