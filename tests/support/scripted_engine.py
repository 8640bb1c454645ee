"""A scripted engine at the ``EngineClient`` seam, for fast deterministic pipeline tests.

Token ids are the bytes of the text (``encode_prompt("hi") == [104, 105]``); every choice
answers ``answer`` one byte per step, for ``max_tokens`` steps, then finishes with
``length`` — or, with ``deterministic``, a byte computed from everything before it (prompt
and output), so that a continuation from "prompt + tokens so far" says exactly what an
uninterrupted run would have. ``die_after`` makes the next request fail (as a dead engine,
503) after that many steps. It records what was asked of it (``calls``) and which
requests are still open, so tests can see what the pipeline did and what it left behind.
Each behaviour tested with it also has a test on the real engine.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from app.engine.protocol import (
    ChoiceDelta,
    DeviceInfo,
    EngineStep,
    ModelInfo,
    SamplingOptions,
    TokenLogprob,
)
from app.errors import EngineUnavailableError, InvalidRequestError

VOCAB = 256  # byte ids; anything above is out of vocabulary
EMBEDDING_SIZE = 8


@dataclass
class ScriptedEngine:
    answer: bytes = b"scripted answer "
    step_delay_s: float = 0.0
    first_step_delay_s: float = 0.0
    max_model_len: int = 1024
    served_name: str = "tiny-llama"  # the default catalogue's model id
    # When False the engine "hangs": steps still wait, but no output is reported as progress.
    heartbeat: bool = True
    deterministic: bool = False
    die_after: int | None = None
    calls: list[tuple[str, Any]] = field(default_factory=list)
    open_requests: set[str] = field(default_factory=set)
    last_progress_at: float = field(default_factory=time.monotonic)
    fail_encode: BaseException | None = None
    ready: bool = True
    # The supervisor's prediction of when it is ready again (None: it makes none).
    ready_in_s: float | None = None

    @property
    def is_ready(self) -> bool:
        return self.ready

    @property
    def model_info(self) -> ModelInfo:
        return ModelInfo(
            self.served_name, "scripted", self.max_model_len, 0, VOCAB, EMBEDDING_SIZE, True
        )

    @property
    def vocab_size(self) -> int:
        return VOCAB

    @property
    def device_info(self) -> DeviceInfo:
        return DeviceInfo("cpu", "scripted", 1)

    def encode_prompt(self, text: str) -> list[int]:
        self.calls.append(("encode_prompt", text))
        if self.fail_encode is not None:
            raise self.fail_encode
        return list(text.encode())

    def encode_chat(
        self, messages: Sequence[dict[str, Any]], tools: list[dict[str, Any]] | None = None
    ) -> list[int]:
        self.calls.append(("encode_chat", list(messages)))
        if self.fail_encode is not None:
            raise self.fail_encode
        return list("".join(f"{m['role']}: {m['content']}\n" for m in messages).encode())

    def tool_parser(self, name: str, tools: list[dict[str, Any]]) -> Any:
        raise ValueError("the scripted engine has no tool parsers")

    def decode(self, token_ids: list[int], skip_special_tokens: bool = True) -> str:
        return bytes(t % VOCAB for t in token_ids).decode(errors="replace")

    def num_unfinished_requests(self) -> int:
        return len(self.open_requests)

    async def abort(self, request_id: str) -> None:
        self.open_requests.discard(request_id)

    async def check_health(self) -> None:
        return None

    def calls_of(self, kind: str) -> list[Any]:
        return [arg for name, arg in self.calls if name == kind]

    async def generate(
        self,
        prompt_token_ids: list[int],
        options: SamplingOptions,
        request_id: str,
        priority: int = 0,
    ) -> AsyncIterator[EngineStep]:
        self.calls.append(("generate", (request_id, priority, options)))
        if any(token >= VOCAB for token in prompt_token_ids):
            raise InvalidRequestError(f"Token id out of vocabulary in {request_id}.")
        self.open_requests.add(request_id)
        die_after, self.die_after = self.die_after, None
        contexts = [list(prompt_token_ids) for _ in range(options.n)]
        try:
            await asyncio.sleep(self.first_step_delay_s)
            max_tokens = options.max_tokens or 1
            for position in range(max_tokens):
                if position:
                    await asyncio.sleep(self.step_delay_s)
                if die_after is not None and position >= die_after:
                    raise EngineUnavailableError("The scripted engine died.", retry_after=1)
                if self.heartbeat:
                    self.last_progress_at = time.monotonic()
                yield self._step(position, max_tokens, options, contexts)
        finally:
            self.open_requests.discard(request_id)
            self.calls.append(("closed", request_id))

    async def embed(
        self,
        prompt_token_ids: list[int],
        request_id: str,
        dimensions: int | None = None,
        priority: int = 0,
    ) -> list[float]:
        """A deterministic unit vector of ``EMBEDDING_SIZE`` (or ``dimensions``) from the ids;
        it waits ``first_step_delay_s`` as a prompt would, and dies as ``die_after`` says."""
        self.calls.append(("embed", (request_id, priority, dimensions)))
        if dimensions is not None and not 1 <= dimensions <= EMBEDDING_SIZE:
            raise InvalidRequestError(
                f"dimensions must be 1..{EMBEDDING_SIZE}.", param="dimensions"
            )
        self.open_requests.add(request_id)
        try:
            await asyncio.sleep(self.first_step_delay_s)
            if self.die_after is not None:
                raise EngineUnavailableError("The scripted engine died.", retry_after=1)
            if self.heartbeat:
                self.last_progress_at = time.monotonic()
            raw = [float(sum(prompt_token_ids) % (i + 7) + 1) for i in range(EMBEDDING_SIZE)]
            vector = raw[: dimensions or EMBEDDING_SIZE]
            norm = sum(x * x for x in vector) ** 0.5
            return [x / norm for x in vector]
        finally:
            self.open_requests.discard(request_id)
            self.calls.append(("closed", request_id))

    def _step(
        self, position: int, max_tokens: int, options: SamplingOptions, contexts: list[list[int]]
    ) -> EngineStep:
        last = position == max_tokens - 1
        choices = []
        for i, context in enumerate(contexts):
            token = self._next(position, context, i, options)
            context.append(token)
            text = chr(token)
            logprobs = None
            if options.logprobs is not None:
                logprobs = [TokenLogprob(text, -0.1, [(text, -0.1)] * options.logprobs)]
            reason = "length" if last else None
            choices.append(ChoiceDelta(i, text, 1, reason, logprobs, [token]))
        return EngineStep(choices, finished=last)

    def _next(
        self, position: int, context: list[int], choice: int, options: SamplingOptions
    ) -> int:
        if not self.deterministic:
            return self.answer[position % len(self.answer)]
        # A letter from the whole context, so every continuation is pinned down by what came
        # before (choices of one request therefore say the same).
        return 97 + (sum(context) * 31 + len(context) * 7) % 26
