"""The engine's own pace over one benchmark level, read from vLLM's ``/metrics``.

vLLM times every generated token in its engine core (``vllm:inter_token_latency_seconds``:
the gap between the engine-core timestamps of a request's consecutive tokens). Over a level,
the mean of those gaps is how fast the engine ran, whoever sent the requests. Both servers
expose it: vLLM's own server, and the gateway, which serves ``vllm:*`` beside its own
metrics (for the proxy run both sides are vLLM's server's engine).

Why the benchmark wants it: on a shared machine the engine's speed drifts by more than the
differences measured (at concurrency 1 the engine's gap went from 1.6 to 3.9 ms between two
levels a minute apart). Output tokens/s × the engine's mean gap is, by Little's law, the mean
number of requests the engine was generating for during the level: how well a front end
keeps the engine fed, with the engine's speed taken out. Its gateway/vLLM ratio is the
front end's cost alone; a gateway that slowed the engine itself would show in the engine
gap's own ratio, which the report prints beside it.
"""

from __future__ import annotations

import re
import urllib.request
from dataclasses import dataclass

ITL_FAMILY = "vllm:inter_token_latency_seconds"
_SAMPLE = re.compile(
    rf"^{re.escape(ITL_FAMILY)}_(sum|count)(?:{{[^}}]*}})? ([0-9.eE+-]+|NaN)$", re.MULTILINE
)


@dataclass(frozen=True)
class EnginePace:
    """The engine's token gaps so far: their total seconds and how many."""

    seconds: float
    gaps: float


def parse_pace(text: str) -> EnginePace | None:
    """The inter-token latency histogram's sum and count (summed over engines), or ``None``
    when the exposition has none (not a vLLM engine, or stats off)."""
    totals = {"sum": 0.0, "count": 0.0}
    found = False
    for kind, value in _SAMPLE.findall(text):
        if value != "NaN":
            totals[kind] += float(value)
            found = True
    return EnginePace(totals["sum"], totals["count"]) if found else None


def read_pace(base_url: str, api_key: str = "", timeout_s: float = 5.0) -> EnginePace | None:
    """``parse_pace`` of ``base_url``'s ``/metrics`` (sent ``api_key``: the gateway asks for
    one there when its auth is on); ``None`` if it cannot be read."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    request = urllib.request.Request(f"{base_url}/metrics", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return parse_pace(response.read().decode("utf-8", "replace"))
    except (OSError, ValueError):  # URLError and HTTPError are OSErrors
        return None


def engine_itl_ms(before: EnginePace | None, after: EnginePace | None) -> float | None:
    """The engine's mean inter-token gap in ms between two readings; ``None`` without both
    or without a gap between them."""
    if before is None or after is None or after.gaps <= before.gaps:
        return None
    return 1000 * (after.seconds - before.seconds) / (after.gaps - before.gaps)
