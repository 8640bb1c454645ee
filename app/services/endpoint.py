"""What one generation route adds to the pipeline, and what the pipeline hands back.

An :class:`Endpoint` knows its request model, the prompts a request holds and how results
become a body or stream chunks; the order of everything else (auth, charges, bounds,
tokenizing, queue, breaker, deadline) is :mod:`app.services.pipeline`'s alone.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from app.config import ServerSettings
from app.engine.protocol import (
    ChatPrompt,
    EngineStep,
    Job,
    Prompt,
    SamplingOptions,
    TextPrompt,
    TokenPrompt,
)
from app.services.formatting import ChoiceResult, ResponseHead

if TYPE_CHECKING:
    from app.routing.router import ModelRoute

__all__ = ["ChatPrompt", "Job", "Prompt", "TextPrompt", "TokenPrompt"]

Chunk = dict[str, Any]


@dataclass(slots=True)
class JobResult:
    job: Job
    choices: list[ChoiceResult]

    @property
    def prompt_tokens(self) -> int:
        return len(self.job.prompt_ids)


class GenerationRequest(Protocol):
    """What the pipeline reads of every request model (chat, completions, simple)."""

    model: Any
    n: int
    priority: int | None
    timeout: float | None

    @property
    def requested_max_tokens(self) -> int | None: ...

    def logprob_entries(self, max_tokens: int) -> int: ...

    def to_sampling_options(self, max_tokens: int) -> SamplingOptions: ...


R = TypeVar("R", bound=GenerationRequest)
R_contra = TypeVar("R_contra", bound=GenerationRequest, contravariant=True)


class StreamFormatter(Protocol):
    """Turns engine steps into the chunks of one stream (the pipeline frames them)."""

    def opening(self) -> list[Chunk]: ...

    def step(self, index: int, step: EngineStep) -> list[Chunk]: ...

    def closing(self, prompt_tokens: int, completion_tokens: int) -> list[Chunk]: ...


class Endpoint(Protocol[R]):
    """A generation route: request → prompts, results → body, steps → chunks."""

    request_model: type[R]
    id_prefix: str
    prompt_param: str  # "messages" or "prompt": named by context-length errors

    def precheck(self, data: Mapping[str, Any], server: ServerSettings) -> None:
        """Cheap bounds on the parsed JSON, before it is validated (a 400 if out)."""
        ...

    def streams(self, req: R) -> bool: ...

    def prompts(self, req: R, server: ServerSettings, route: ModelRoute) -> list[Prompt]:
        """The request's prompts for ``route``'s model (its vocabulary, its tool parser)."""
        ...

    def body(
        self, head: ResponseHead, req: R, results: list[JobResult], route: ModelRoute
    ) -> Chunk:
        """The JSON answer, from the results of the model ``route`` that answered."""
        ...

    def formatter(
        self, head: ResponseHead, req: R, jobs: list[Job], route: ModelRoute
    ) -> StreamFormatter: ...


@dataclass(slots=True)
class Reply:
    """What a run answers with: a JSON body, or a stream of chunk lists (one per step)."""

    headers: dict[str, str]
    body: Chunk | None = None
    events: AsyncIterator[list[Chunk]] | None = None
