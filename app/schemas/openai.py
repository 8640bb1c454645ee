"""OpenAI request models (chat, completions, the seed project's simple endpoints).

Bounds follow OpenAI's API reference; unknown fields are ignored as OpenAI does. Each
request model builds the engine-neutral :class:`SamplingOptions` itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AliasChoices, Field, field_validator, model_validator

from app.engine.protocol import SamplingOptions
from app.errors import InvalidRequestError
from app.schemas import logit_bias
from app.schemas.base import GatewayModel as _Request
from app.schemas.messages import ChatMessage
from app.schemas.tools import MAX_TOOLS, ChatTool, NamedToolChoice, ToolChoice, forced_call_schema

MAX_STOP_SEQUENCES = 4
# Strings a client sends that end up in logs, error messages and the engine: bounded, so no
# field can carry megabytes (an unknown 10 kB model name would be echoed in its 404).
MAX_MODEL_CHARS = 256
MAX_STOP_CHARS = 256
MAX_USER_CHARS = 256
# vLLM serialises sampling params as 64-bit integers; larger values fail inside the engine.
MAX_INT64 = 2**63 - 1
# vLLM samples greedily below this temperature, and then allows only n=1.
GREEDY_TEMPERATURE = 1e-5


class StreamOptions(_Request):
    include_usage: bool = False


class JsonSchemaFormat(_Request):
    name: str = Field(max_length=64)
    description: str | None = None
    # ``schema`` shadows a BaseModel attribute, hence the alias.
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Request):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class _SamplingRequest(_Request):
    """Fields shared by chat and completions (OpenAI's, then vLLM's common extras)."""

    model: str = Field(min_length=1, max_length=MAX_MODEL_CHARS)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1, le=128)
    stop: str | Annotated[list[str], Field(max_length=MAX_STOP_SEQUENCES)] | None = None
    seed: int | None = Field(default=None, ge=-(2**63), le=MAX_INT64)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    user: str | None = Field(default=None, max_length=MAX_USER_CHARS)
    stream: bool = False
    stream_options: StreamOptions | None = None
    top_k: int | None = Field(default=None, ge=-1, le=MAX_INT64)
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    min_tokens: int = Field(default=0, ge=0)
    ignore_eos: bool = False
    repetition_penalty: float | None = Field(default=None, gt=0.0, le=2.0)
    skip_special_tokens: bool = True
    logit_bias: dict[str, float] | None = None
    # Gateway extras: may lower (never raise) the key's priority; cap the deadline.
    priority: int | None = Field(default=None, ge=0, le=10)
    timeout: float | None = Field(default=None, gt=0)

    @field_validator("stop")
    @classmethod
    def _stop_strings_not_empty(cls, value: str | list[str] | None) -> str | list[str] | None:
        items = [value] if isinstance(value, str) else value or []
        if any(item == "" for item in items):
            raise ValueError("stop sequences must not be empty strings")
        if any(len(item) > MAX_STOP_CHARS for item in items):
            raise ValueError(f"stop sequences must be at most {MAX_STOP_CHARS} characters")
        return value

    @field_validator("logit_bias")
    @classmethod
    def _biases_in_range(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        if value is not None:
            logit_bias.token_biases(value)
        return value

    @property
    def token_biases(self) -> dict[int, float] | None:
        """``logit_bias`` keyed by token id (checked against the vocabulary by the route)."""
        return logit_bias.token_biases(self.logit_bias) if self.logit_bias else None

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)

    def _check_engine_rules(self, max_tokens: int) -> None:
        """Cross-field rules vLLM checks when it builds its params (too late for a 400)."""
        if self.min_tokens > max_tokens:
            raise InvalidRequestError(
                f"min_tokens={self.min_tokens} is above max_tokens={max_tokens}.",
                param="min_tokens",
            )
        if self.n > 1 and _or(self.temperature, 1.0) < GREEDY_TEMPERATURE:
            raise InvalidRequestError(
                f"n={self.n} needs sampling; with temperature {self.temperature} (greedy) "
                "every choice would be the same, so n must be 1.",
                param="n",
            )

    def _base_options(self, max_tokens: int, logprobs: int | None) -> SamplingOptions:
        self._check_engine_rules(max_tokens)
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return SamplingOptions(
            max_tokens=max_tokens,
            temperature=_or(self.temperature, 1.0),
            top_p=_or(self.top_p, 1.0),
            top_k=_or(self.top_k, 0),
            min_p=_or(self.min_p, 0.0),
            n=self.n,
            seed=self.seed,
            stop=stop,
            presence_penalty=_or(self.presence_penalty, 0.0),
            frequency_penalty=_or(self.frequency_penalty, 0.0),
            repetition_penalty=_or(self.repetition_penalty, 1.0),
            min_tokens=self.min_tokens,
            ignore_eos=self.ignore_eos,
            logprobs=logprobs,
            logit_bias=self.token_biases,
            skip_special_tokens=self.skip_special_tokens,
        )


def _or(value: Any, default: Any) -> Any:
    return default if value is None else value


class ChatCompletionRequest(_SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    response_format: ResponseFormat | None = None
    tools: Annotated[list[ChatTool], Field(max_length=MAX_TOOLS)] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None

    @model_validator(mode="after")
    def _tool_choice_is_declared(self) -> ChatCompletionRequest:
        names = [tool.function.name for tool in self.tools or ()]
        if len(set(names)) < len(names):
            raise InvalidRequestError("Tool names must be unique.", param="tools")
        choice = self.tool_choice
        if isinstance(choice, NamedToolChoice) and choice.function.name not in names:
            raise InvalidRequestError(
                f"tool_choice names the function {choice.function.name[:64]!r}, which is not "
                "declared in tools.",
                param="tool_choice",
            )
        if choice == "required" and not names:
            raise InvalidRequestError(
                "tool_choice 'required' needs at least one tool in tools.", param="tool_choice"
            )
        self._forced_call_schema()  # conflicting $defs: a 400 now, not after tokenizing
        return self

    @property
    def effective_tool_choice(self) -> ToolChoice:
        """OpenAI's defaults: ``auto`` when tools are declared, else ``none``."""
        if not self.tools:
            return "none"
        return self.tool_choice or "auto"

    @property
    def allows_parallel_calls(self) -> bool:
        return self.parallel_tool_calls is not False

    def template_tools(self) -> list[dict[str, Any]] | None:
        return [tool.for_template() for tool in self.tools] if self.tools else None

    @property
    def requested_max_tokens(self) -> int | None:
        """``max_completion_tokens`` supersedes the deprecated ``max_tokens``."""
        return self.max_completion_tokens or self.max_tokens

    def logprob_entries(self, max_tokens: int) -> int:
        """Logprob entries a non-streamed answer would hold: (top + the chosen) per token."""
        if not self.logprobs:
            return 0
        return self.n * max_tokens * ((self.top_logprobs or 0) + 1)

    def chat_messages(self) -> list[dict[str, Any]]:
        return [message.for_template() for message in self.messages]

    def to_sampling_options(self, max_tokens: int) -> SamplingOptions:
        logprobs = (self.top_logprobs or 0) if self.logprobs else None
        options = self._base_options(max_tokens, logprobs)
        fmt = self.response_format
        if fmt is not None and fmt.type == "json_object":
            options.json_object = True
        elif fmt is not None and fmt.type == "json_schema":
            options.json_schema = fmt.json_schema.schema_ if fmt.json_schema else {}
        forced = self._forced_call_schema()
        if forced is not None:  # the call's shape replaces any response_format
            options.json_schema, options.json_object = forced, False
        return options

    def _forced_call_schema(self) -> dict[str, Any] | None:
        try:
            return forced_call_schema(
                self.tools or [], self.effective_tool_choice, self.allows_parallel_calls
            )
        except ValueError as exc:
            raise InvalidRequestError(str(exc), param="tools") from None


PromptInput = str | list[str] | list[int] | list[list[int]]
# Tokenizers hold ids as unsigned 32-bit integers (decoding a larger one raises OverflowError).
MAX_TOKEN_ID = 2**32 - 1


def _token_ids(prompt: PromptInput) -> Iterator[int]:
    if isinstance(prompt, list):
        for item in prompt:
            if isinstance(item, int):
                yield item
            elif isinstance(item, list):
                yield from item


class CompletionRequest(_SamplingRequest):
    prompt: PromptInput
    max_tokens: int | None = Field(default=16, ge=1)
    logprobs: int | None = Field(default=None, ge=0, le=5)
    echo: bool = False
    # vLLM's extension: each choice (and chunk) carries its token ids. Another gateway or
    # router in front of this one asks for them to count, and resume, exactly.
    return_token_ids: bool = False

    @field_validator("prompt")
    @classmethod
    def _prompt_not_empty(cls, value: PromptInput) -> PromptInput:
        if isinstance(value, list) and (not value or any(item == [] for item in value)):
            raise ValueError("prompt must not be empty")
        if not all(0 <= token <= MAX_TOKEN_ID for token in _token_ids(value)):
            raise ValueError(f"token ids must be between 0 and {MAX_TOKEN_ID}")
        return value

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_tokens

    def logprob_entries(self, max_tokens: int) -> int:
        if self.logprobs is None:
            return 0
        return self.n * max_tokens * (self.logprobs + 1)

    def prompts(self) -> list[str | list[int]]:
        """The prompt field as a list of prompts, each text or token ids."""
        prompt = self.prompt
        if isinstance(prompt, str):
            return [prompt]
        if prompt and all(isinstance(item, int) for item in prompt):
            return [list(prompt)]  # type: ignore[arg-type]
        return list(prompt)  # type: ignore[arg-type]

    def to_sampling_options(self, max_tokens: int) -> SamplingOptions:
        return self._base_options(max_tokens, self.logprobs)


class SimpleGenerateRequest(_Request):
    """The seed project's ``/v1/generate`` and ``/v1/stream`` body."""

    prompt: str = Field(min_length=1)
    max_tokens: int = Field(
        default=64, ge=1, validation_alias=AliasChoices("max_tokens", "max_length")
    )
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    model: str | None = Field(default=None, max_length=MAX_MODEL_CHARS)
    priority: int | None = Field(default=None, ge=0, le=10)
    timeout: float | None = Field(default=None, gt=0)
    n: ClassVar[int] = 1

    @property
    def requested_max_tokens(self) -> int:
        return self.max_tokens

    def logprob_entries(self, max_tokens: int) -> int:
        return 0

    def to_sampling_options(self, max_tokens: int) -> SamplingOptions:
        return SamplingOptions(
            max_tokens=max_tokens, temperature=self.temperature, top_p=self.top_p
        )
