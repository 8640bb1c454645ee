"""Server-sent events framing, in one place: ``data: <json>`` events, then ``[DONE]``."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

DONE = b"data: [DONE]\n\n"
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def frame(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def frames(payloads: Iterable[dict[str, Any]]) -> bytes:
    """Several events in one write: one engine step's chunks go out together."""
    return b"".join(b"data: " + orjson.dumps(p) + b"\n\n" for p in payloads)
