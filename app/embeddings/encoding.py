"""The answer of ``/v1/embeddings`` (OpenAI's ``CreateEmbeddingResponse``): vectors as JSON
floats, or with ``encoding_format: base64`` as the base64 of little-endian float32 bytes —
what the OpenAI SDK asks for by default and decodes with ``numpy.frombuffer``."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

Encoding = Literal["float", "base64"]


def encode_vector(vector: Sequence[float], encoding: Encoding) -> list[float] | str:
    if encoding == "float":
        return list(vector)
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")


def embedding_response(
    model: str, vectors: list[list[float]], encoding: Encoding, prompt_tokens: int
) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": encode_vector(vector, encoding)}
            for i, vector in enumerate(vectors)
        ],
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }
