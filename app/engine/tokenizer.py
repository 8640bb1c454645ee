"""A model's tokenizer on its own, for models the gateway serves only through remote
deployments: it counts, charges and routes their tokens, and renders their chat template,
exactly as the engine's own tokenizer does for local ones (see EngineManager)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from app.errors import InvalidRequestError


class HFTokenizer:
    """``transformers.AutoTokenizer`` from a local path or hub id, loaded once."""

    def __init__(self, source: str, trust_remote_code: bool = False) -> None:
        from transformers import AutoTokenizer

        self.source = source
        self._tokenizer: Any = AutoTokenizer.from_pretrained(
            source, trust_remote_code=trust_remote_code
        )

    def encode_prompt(self, text: str) -> list[int]:
        return list(self._tokenizer.encode(text))

    def encode_chat(self, messages: Sequence[dict[str, str]]) -> list[int]:
        return render_chat(self._tokenizer, messages)

    def decode(self, token_ids: list[int]) -> str:
        """Text of ``token_ids`` as vLLM spells output (special tokens skipped)."""
        return str(self._tokenizer.decode(token_ids, skip_special_tokens=True))


def render_chat(tokenizer: Any, messages: Sequence[dict[str, str]]) -> list[int]:
    """The chat template applied (ending in the assistant's turn), as token ids."""
    if not getattr(tokenizer, "chat_template", None):
        raise InvalidRequestError("This model has no chat template; use /v1/completions.")
    try:
        text = tokenizer.apply_chat_template(
            list(messages), tokenize=False, add_generation_prompt=True
        )
    except Exception as exc:  # a template may reject a conversation (e.g. role order)
        raise InvalidRequestError(f"The chat template rejected the messages: {exc}") from exc
    # The rendered template already holds its special tokens.
    return list(tokenizer.encode(str(text), add_special_tokens=False))
