"""``LOG_PROMPTS``: a prompt and its completion on the request's log line, clipped."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from app.engine.protocol import ChatPrompt, EngineStep, Prompt, TextPrompt
from app.observability.recorder import RequestRecorder

LOG_TEXT_CHARS = 4096  # of a prompt and of a completion


class PromptLog:
    """Collects what LOG_PROMPTS shows; does nothing (one attribute test) when it is off."""

    __slots__ = ("_recorder", "texts")

    def __init__(self) -> None:
        self._recorder: RequestRecorder | None = None
        self.texts: list[str] | None = None  # None: not logging

    def prompt(self, recorder: RequestRecorder | None, prompts: list[Prompt]) -> None:
        if recorder is not None and recorder.ctx.log_prompts:
            self._recorder, self.texts = recorder, []
            recorder.content(prompt=_clip(repr([_shown(p) for p in prompts])))

    def step(self, step: EngineStep) -> None:
        if self.texts is not None:
            self.texts.extend(delta.text for delta in step.choices)

    def completion(self, texts: Iterable[str] | None = None) -> None:
        if self._recorder is not None:
            joined = "".join(self.texts or () if texts is None else texts)
            self._recorder.content(completion=_clip(joined))


def _shown(prompt: Prompt) -> Any:
    if isinstance(prompt, ChatPrompt):
        return prompt.messages
    return prompt.text if isinstance(prompt, TextPrompt) else prompt.ids


def _clip(text: str) -> str:
    return text if len(text) <= LOG_TEXT_CHARS else text[:LOG_TEXT_CHARS] + "…"
