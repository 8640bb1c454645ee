"""``logit_bias``: token id (a JSON object key, so a string) → bias from -100 to 100.

As OpenAI: at most 300 entries; -100 in effect forbids a token and +100 makes it all but
certain. Ids beyond the model's vocabulary are refused once the model is known
(:func:`check_in_vocabulary`), before the request queues.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from app.errors import InvalidRequestError

MAX_LOGIT_BIAS = 300
MAX_BIAS = 100.0


def check_count(data: Mapping[str, Any]) -> None:
    """Before validation: a 4 MiB body could hold 300,000 entries."""
    bias = data.get("logit_bias")
    if isinstance(bias, dict) and len(bias) > MAX_LOGIT_BIAS:
        raise InvalidRequestError(
            f"logit_bias may have at most {MAX_LOGIT_BIAS} entries; got {len(bias)}.",
            param="logit_bias",
        )


def token_biases(bias: Mapping[str, float]) -> dict[int, float]:
    """The validated mapping with integer ids; ``ValueError`` for a bad key or value."""
    biases = {}
    for key, value in bias.items():
        if not (key.isascii() and key.isdigit()):
            raise ValueError(f"keys must be token ids (non-negative integers), not {key[:32]!r}")
        if not -MAX_BIAS <= value <= MAX_BIAS:
            raise ValueError(f"biases must be between -100 and 100, not {value} (token {key})")
        biases[int(key)] = value
    return biases


def check_in_vocabulary(biases: Mapping[int, float] | None, vocab_size: int) -> None:
    """400 naming the first id the model does not have."""
    outside = sorted(token for token in biases or () if token >= vocab_size)
    if outside:
        raise InvalidRequestError(
            f"logit_bias names token id {outside[0]}, outside this model's vocabulary "
            f"(ids 0 to {vocab_size - 1}).",
            param="logit_bias",
        )
