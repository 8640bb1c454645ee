"""A scripted engine at the ``EngineClient`` seam, for fast deterministic pipeline tests.

Token ids are the bytes of the text (``encode_prompt("hi") == [104, 105]``); every choice
answers ``answer`` one byte per step, for ``max_tokens`` steps, then finishes with
``length``. It records what was asked of it (``calls``) and which requests are still open,
so tests can see what the pipeline did and what it left behind. Each behaviour tested
with it also has a test on the real engine.
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
from app.errors import InvalidRequestError

VOCAB = 256  # byte ids; anything above is out of vocabulary


@dataclass
class ScriptedEngine:
    answer: bytes = b"scripted answer "
    step_delay_s: float = 0.0
    first_step_delay_s: float = 0.0
    max_model_len: int = 1024
    served_name: str = "scripted"
    # When False the engine "hangs": steps still wait, but no output is reported as progress.
    heartbeat: bool = True
    calls: list[tuple[str, Any]] = field(default_factory=list)
    open_requests: set[str] = field(default_factory=set)
    last_progress_at: float = field(default_factory=time.monotonic)
    fail_encode: BaseException | None = None

    @property
    def is_ready(self) -> bool:
        return True

    @property
    def model_info(self) -> ModelInfo:
        return ModelInfo(self.served_name, "scripted", self.max_model_len, 0, VOCAB)

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

    def decode(self, token_ids: list[int]) -> str:
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
        try:
            await asyncio.sleep(self.first_step_delay_s)
            max_tokens = options.max_tokens or 1
            for position in range(max_tokens):
                if position:
                    await asyncio.sleep(self.step_delay_s)
                if self.heartbeat:
                    self.last_progress_at = time.monotonic()
                yield self._step(position, max_tokens, options)
        finally:
            self.open_requests.discard(request_id)
            self.calls.append(("closed", request_id))

    def _step(self, position: int, max_tokens: int, options: SamplingOptions) -> EngineStep:
        text = chr(self.answer[position % len(self.answer)])
        last = position == max_tokens - 1
        logprobs = None
        if options.logprobs is not None:
            top = [(text, -0.1)] * options.logprobs
            logprobs = [TokenLogprob(text, -0.1, top)]
        choices = [
            ChoiceDelta(i, text, 1, "length" if last else None, logprobs) for i in range(options.n)
        ]
        return EngineStep(choices, finished=last)
