"""The ``EngineClient`` seam: what the rest of the gateway needs from an inference engine.

Everything here is plain Python so that services, routers and tests never import vLLM.
:class:`app.engine.manager.EngineManager` is the real implementation; fault injection in
tests wraps an ``EngineClient`` rather than patching the manager.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from app.engine.tool_protocol import ToolCallParser

FinishReason = Literal["stop", "length"]


@dataclass(slots=True)
class SamplingOptions:
    """Engine-neutral sampling parameters, built by the request models."""

    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    n: int = 1
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    min_tokens: int = 0
    ignore_eos: bool = False
    logprobs: int | None = None
    json_schema: dict[str, Any] | None = None
    json_object: bool = False
    # Token id -> bias added to its logit (-100 forbids, +100 all but forces).
    logit_bias: dict[int, float] | None = None
    # False keeps special tokens in the text (a tool parser may need to see them).
    skip_special_tokens: bool = True


@dataclass(slots=True)
class TokenLogprob:
    """One generated token with its log-probability and the most likely alternatives."""

    token: str
    logprob: float
    top: list[tuple[str, float]]


@dataclass(slots=True)
class ChoiceDelta:
    """New output of one choice since the previous engine step (``token_ids``: the new
    tokens, where the engine says which)."""

    index: int
    text: str
    num_tokens: int
    finish_reason: FinishReason | None = None
    logprobs: list[TokenLogprob] | None = None
    token_ids: Sequence[int] | None = None


@dataclass(slots=True)
class EngineStep:
    """One step of a generation: deltas for the choices that advanced."""

    choices: list[ChoiceDelta]
    finished: bool

    @property
    def num_tokens(self) -> int:
        """Tokens this step produced, all choices together."""
        return sum(delta.num_tokens for delta in self.choices)


@dataclass(frozen=True, slots=True)
class ChatPrompt:
    """Messages (and the function tools declared), rendered with the model's template."""

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None = None


@dataclass(frozen=True, slots=True)
class TextPrompt:
    text: str


@dataclass(frozen=True, slots=True)
class TokenPrompt:
    ids: list[int]


Prompt = ChatPrompt | TextPrompt | TokenPrompt


@dataclass(frozen=True, slots=True)
class Job:
    """One prompt's engine request, complete when built: what any deployment needs to run
    it (token ids for engines that take them, the prompt itself for those that do not)."""

    request_id: str
    prompt: Prompt
    prompt_ids: list[int]
    options: SamplingOptions
    priority: int


@dataclass(frozen=True, slots=True)
class EmbeddingJob:
    """One input of an embeddings request: its tokens, and the vector length asked for."""

    request_id: str
    prompt: TextPrompt | TokenPrompt
    prompt_ids: list[int]
    dimensions: int | None
    priority: int


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What clients and validators need to know about the served model."""

    served_name: str
    source: str
    max_model_len: int
    created: int
    # Width of the logits: token ids (logit_bias keys) run from 0 to vocab_size - 1.
    vocab_size: int = 0
    # A pooling engine's vectors: their length, and whether a prefix of one (``dimensions``)
    # is itself an embedding (Matryoshka), and of which lengths (None: any).
    embedding_size: int = 0
    matryoshka: bool = False
    matryoshka_dimensions: tuple[int, ...] | None = None


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """Where the engine runs."""

    kind: Literal["cuda", "cpu"]
    name: str
    count: int


@runtime_checkable
class EngineClient(Protocol):
    """What the gateway needs from an engine; see the manager for failure modes."""

    @property
    def is_ready(self) -> bool: ...

    @property
    def model_info(self) -> ModelInfo: ...

    @property
    def device_info(self) -> DeviceInfo: ...

    @property
    def last_progress_at(self) -> float:
        """When the engine last returned output (``time.monotonic()``), whoever read it:
        stall detection and the breaker judge the engine by this, not one consumer."""
        ...

    @property
    def vocab_size(self) -> int:
        """``model_info.vocab_size``: what the router's tokenizer protocol reads."""
        ...

    def encode_prompt(self, text: str) -> list[int]: ...

    def encode_chat(
        self, messages: Sequence[dict[str, Any]], tools: list[dict[str, Any]] | None = None
    ) -> list[int]:
        """The chat template applied to ``messages`` (and ``tools``, which it renders)."""
        ...

    def tool_parser(self, name: str, tools: list[dict[str, Any]]) -> ToolCallParser:
        """A fresh parser (one choice's output) of the model's tool-call syntax ``name``
        (vLLM's ``--tool-call-parser`` names); ``ValueError`` when it cannot be built."""
        ...

    def decode(self, token_ids: list[int], skip_special_tokens: bool = True) -> str: ...

    def generate(
        self,
        prompt_token_ids: list[int],
        options: SamplingOptions,
        request_id: str,
        priority: int = 0,
    ) -> AsyncIterator[EngineStep]: ...

    async def embed(
        self,
        prompt_token_ids: list[int],
        request_id: str,
        dimensions: int | None = None,
        priority: int = 0,
    ) -> list[float]:
        """One prompt's embedding, from a pooling engine (``runner="pooling"``)."""
        ...

    async def abort(self, request_id: str) -> None: ...

    async def check_health(self) -> None: ...

    def num_unfinished_requests(self) -> int: ...
