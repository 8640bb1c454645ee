"""The seed project's simple endpoints on the pipeline: ``/v1/generate`` (JSON) and
``/v1/stream`` (SSE ``data: {"id", "text", "finish_reason"}`` events)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from app.config import ServerSettings
from app.engine.protocol import EngineStep
from app.routing.router import ModelRoute
from app.schemas.openai import SimpleGenerateRequest
from app.services import formatting as fmt
from app.services.endpoint import Chunk, Job, JobResult, Prompt, TextPrompt


class SimpleEndpoint:
    request_model = SimpleGenerateRequest
    id_prefix = "gen"
    prompt_param = "prompt"

    def __init__(self, stream: bool) -> None:
        self.stream = stream

    def precheck(self, data: Mapping[str, Any], server: ServerSettings) -> None:
        return None

    def streams(self, req: SimpleGenerateRequest) -> bool:
        return self.stream

    def prompts(
        self, req: SimpleGenerateRequest, server: ServerSettings, route: ModelRoute
    ) -> list[Prompt]:
        return [TextPrompt(req.prompt)]

    def body(
        self,
        head: fmt.ResponseHead,
        req: SimpleGenerateRequest,
        results: list[JobResult],
        route: ModelRoute,
    ) -> Chunk:
        (result,) = results
        choice = result.choices[0]
        return {
            "id": head.id,
            "model": head.model,
            "text": choice.text,
            "finish_reason": choice.finish_reason or "stop",
            "usage": fmt.usage(result.prompt_tokens, choice.num_tokens),
        }

    def formatter(
        self,
        head: fmt.ResponseHead,
        req: SimpleGenerateRequest,
        jobs: list[Job],
        route: ModelRoute,
    ) -> SimpleStream:
        return SimpleStream(head)


class SimpleStream:
    __slots__ = ("head",)

    def __init__(self, head: fmt.ResponseHead) -> None:
        self.head = head

    def opening(self) -> list[Chunk]:
        return []

    def step(self, index: int, step: EngineStep) -> list[Chunk]:
        return [
            {"id": self.head.id, "text": d.text, "finish_reason": d.finish_reason}
            for d in step.choices
        ]

    def closing(self, prompt_tokens: int, completion_tokens: int) -> list[Chunk]:
        return []
