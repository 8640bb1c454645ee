"""A model's tokenizer on its own, for models the gateway serves only through remote
deployments: it counts, charges and routes their tokens, and renders their chat template,
exactly as the engine's own tokenizer does for local ones (see EngineManager)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from app.engine.tool_protocol import ToolCallParser
from app.errors import InvalidRequestError


class HFTokenizer:
    """``transformers.AutoTokenizer`` from a local path or hub id, loaded once."""

    def __init__(self, source: str, trust_remote_code: bool = False) -> None:
        from transformers import AutoTokenizer

        self.source = source
        self._tokenizer: Any = AutoTokenizer.from_pretrained(
            source, trust_remote_code=trust_remote_code
        )

    @property
    def vocab_size(self) -> int:
        return len(self._tokenizer)

    def encode_prompt(self, text: str) -> list[int]:
        return list(self._tokenizer.encode(text))

    def encode_chat(
        self, messages: Sequence[dict[str, Any]], tools: list[dict[str, Any]] | None = None
    ) -> list[int]:
        return render_chat(self._tokenizer, messages, tools)

    def decode(self, token_ids: list[int], skip_special_tokens: bool = True) -> str:
        """Text of ``token_ids`` as vLLM spells output (special tokens skipped by default)."""
        return str(self._tokenizer.decode(token_ids, skip_special_tokens=skip_special_tokens))

    def tool_parser(self, name: str, tools: list[dict[str, Any]]) -> ToolCallParser:
        from app.engine.tool_parsing import build_tool_parser

        return build_tool_parser(name, self._tokenizer, tools)


def render_chat(
    tokenizer: Any, messages: Sequence[dict[str, Any]], tools: list[dict[str, Any]] | None = None
) -> list[int]:
    """The chat template applied (ending in the assistant's turn), as token ids; the
    template renders ``tools`` (OpenAI's ``{"type": "function", "function": ...}``)."""
    if not getattr(tokenizer, "chat_template", None):
        raise InvalidRequestError("This model has no chat template; use /v1/completions.")
    try:
        text = tokenizer.apply_chat_template(
            list(messages), tools=tools or None, tokenize=False, add_generation_prompt=True
        )
    except Exception as exc:  # a template may reject a conversation (e.g. role order)
        raise InvalidRequestError(f"The chat template rejected the messages: {exc}") from exc
    # The rendered template already holds its special tokens.
    return list(tokenizer.encode(str(text), add_special_tokens=False))
