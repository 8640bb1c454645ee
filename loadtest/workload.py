"""Workload model for the locust users: profiles, prompts, request bodies, stream timing.

Everything here is plain Python (no locust, no gevent) so it can be unit-tested and reused.
The locustfile wires it to locust's events; the runner reads what :class:`ClientMetrics`
writes.
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

PROFILES_DIR = Path(__file__).resolve().parent / "profiles"
DEFAULT_PROFILE = "short-chat"
DONE_MARKER = "[DONE]"

# Short, common words from the embedded model's corpus (fables and fairy tales): each is
# one token for its BPE tokenizer in the usual case, so N words make a prompt of about N
# tokens. Exact counts come back in ``usage.prompt_tokens`` and are reported.
_WORDS: tuple[str, ...] = (
    "the", "fox", "and", "wolf", "lamb", "king", "said", "little", "old", "man", "one",
    "day", "came", "to", "a", "wood", "where", "there", "was", "house", "by", "river",
    "he", "she", "went", "out", "into", "world", "with", "his", "her", "good", "bird",
    "tree", "gold", "water", "queen", "time", "upon", "once", "long", "ago", "child",
)  # fmt: skip


@dataclass(frozen=True)
class Profile:
    """A workload: request mix and sizes. Weights pick chat vs completions per request;
    ``stream_ratio`` is the probability that a request streams (TTFT is measured only then).
    """

    name: str
    description: str = ""
    prompt_tokens: int = 32
    max_tokens: int = 32
    stream_ratio: float = 0.5
    ignore_eos: bool = True
    temperature: float = 0.0
    chat_weight: int = 1
    completion_weight: int = 0

    def __post_init__(self) -> None:
        if self.prompt_tokens < 1 or self.max_tokens < 1:
            raise ValueError(f"profile {self.name}: prompt_tokens and max_tokens must be >= 1")
        if not 0.0 <= self.stream_ratio <= 1.0:
            raise ValueError(f"profile {self.name}: stream_ratio must be within [0, 1]")
        if self.chat_weight < 0 or self.completion_weight < 0:
            raise ValueError(f"profile {self.name}: weights must be >= 0")
        if self.chat_weight + self.completion_weight == 0:
            raise ValueError(f"profile {self.name}: at least one weight must be positive")

    def with_overrides(self, **overrides: Any) -> Profile:
        """A copy with every override that is not ``None`` applied (CLI flags win)."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    def pick_kind(self, rng: random.Random) -> tuple[str, bool]:
        """Draw one request: (``"chat"`` or ``"completion"``, stream?)."""
        kind = rng.choices(
            ("chat", "completion"), weights=(self.chat_weight, self.completion_weight)
        )[0]
        return kind, rng.random() < self.stream_ratio


def available_profiles() -> list[str]:
    """Names of the bundled profiles (``loadtest/profiles/*.json``)."""
    return sorted(path.stem for path in PROFILES_DIR.glob("*.json"))


def load_profile(name_or_path: str) -> Profile:
    """Load a bundled profile by name, or any JSON file by path.

    Raises ``ValueError`` naming the bundled profiles when nothing matches.
    """
    path = Path(name_or_path)
    if not path.suffix:
        path = PROFILES_DIR / f"{name_or_path}.json"
    if not path.is_file():
        raise ValueError(
            f"unknown workload profile {name_or_path!r}; bundled: {', '.join(available_profiles())}"
        )
    data = json.loads(path.read_text())
    data.setdefault("name", path.stem)
    return Profile(**data)


def make_prompt(tokens: int, rng: random.Random) -> str:
    """About ``tokens`` tokens of random words (a different prompt each call, so no
    prefix-cache hits flatter the numbers)."""
    return " ".join(rng.choice(_WORDS) for _ in range(tokens))


def request_body(
    kind: str, model: str, prompt: str, profile: Profile, stream: bool
) -> dict[str, Any]:
    """The OpenAI wire body for a chat or completions request of this profile."""
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": profile.max_tokens,
        "temperature": profile.temperature,
        "stream": stream,
    }
    if profile.ignore_eos:
        body["ignore_eos"] = True  # vLLM's extension: fixed-length outputs
    if stream:
        body["stream_options"] = {"include_usage": True}
    if kind == "chat":
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    return body


def endpoint_path(kind: str) -> str:
    """The URL path for a request kind."""
    return "/v1/chat/completions" if kind == "chat" else "/v1/completions"


def parse_sse_line(line: str) -> dict[str, Any] | str | None:
    """One SSE line → the decoded ``data:`` JSON, ``DONE_MARKER``, or ``None`` (blank lines,
    comments, other fields). Raises ``ValueError`` when a data line is not JSON."""
    if not line.startswith("data:"):
        return None
    payload = line[5:].strip()
    if payload == DONE_MARKER:
        return DONE_MARKER
    if not payload:
        return None
    decoded = json.loads(payload)
    if not isinstance(decoded, dict):
        raise ValueError(f"SSE data is not an object: {payload[:80]}")
    return decoded


def chunk_text(chunk: Mapping[str, Any]) -> str:
    """The generated text in a chat or completions chunk ('' for role/usage-only chunks)."""
    choices = chunk.get("choices") or []
    if not choices:
        return ""
    choice = choices[0]
    if "delta" in choice:
        return (choice.get("delta") or {}).get("content") or ""
    return choice.get("text") or ""


@dataclass
class StreamTimer:
    """Times one stream: TTFT is the first chunk carrying text, gaps are between later
    text chunks. All times are ``time.perf_counter()`` seconds; results in milliseconds."""

    started: float
    first_token_at: float | None = None
    last_token_at: float | None = None
    gaps_ms: list[float] = field(default_factory=list)
    text_chunks: int = 0

    def on_text(self, now: float) -> None:
        """Record a chunk that carried text."""
        if self.first_token_at is None:
            self.first_token_at = now
        else:
            self.gaps_ms.append((now - (self.last_token_at or now)) * 1000.0)
        self.last_token_at = now
        self.text_chunks += 1

    @property
    def ttft_ms(self) -> float | None:
        """Time to first token, or ``None`` when no text arrived."""
        if self.first_token_at is None:
            return None
        return (self.first_token_at - self.started) * 1000.0

    @property
    def mean_gap_ms(self) -> float | None:
        """Mean inter-token gap of this stream, or ``None`` with fewer than two text chunks."""
        return sum(self.gaps_ms) / len(self.gaps_ms) if self.gaps_ms else None


def classify_outcome(status: int | None, error: BaseException | None = None) -> str:
    """The status-code bucket of one request: the HTTP status as text (``"200"``, ``"429"``),
    ``"200 then error"`` when the 200 was followed by an SSE error event or an unreadable
    body, or ``"transport: <Exc>"`` when no response came at all."""
    if status is None:
        return f"transport: {type(error).__name__ if error else 'unknown'}"
    if status == 200 and error is not None:
        return "200 then error"
    return str(status)


class RequestBudget:
    """A cap on the number of requests in a run. ``claim()`` before sending, ``finish()``
    after; the ``finish()`` that completes the last claimed request returns True.

    Not thread-safe: locust users are greenlets that only switch on I/O, and neither method
    does I/O.
    """

    def __init__(self, total: int | None) -> None:
        if total is not None and total < 1:
            raise ValueError("the request cap must be >= 1")
        self.total = total
        self.claimed = 0
        self.finished = 0

    def claim(self) -> bool:
        """Reserve one request; False once ``total`` requests were claimed."""
        if self.total is not None and self.claimed >= self.total:
            return False
        self.claimed += 1
        return True

    def finish(self) -> bool:
        """Mark one claimed request done; True exactly when the whole budget is done."""
        self.finished += 1
        return self.total is not None and self.finished >= self.total


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0–100) with linear interpolation (numpy's default), or
    ``None`` for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def distribution(values: Sequence[float], quantiles: Iterable[float] = (50, 95, 99)) -> dict:
    """``{"count", "mean", "p50", ...}`` of ``values`` in their own unit."""
    summary: dict[str, float | int | None] = {
        "count": len(values),
        "mean": sum(values) / len(values) if values else None,
    }
    for q in quantiles:
        summary[f"p{q:g}"] = percentile(values, q)
    return summary


@dataclass
class ClientMetrics:
    """What the client side knows that locust's stats do not: exact status buckets,
    token counts, every inter-token gap, and a per-second timeline for the plot."""

    statuses: Counter[str] = field(default_factory=Counter)
    completed: int = 0
    output_tokens: int = 0
    prompt_tokens: int = 0
    gaps_ms: list[float] = field(default_factory=list)
    timeline: list[dict[str, float]] = field(default_factory=list)
    started_at: float | None = None
    stopped_at: float | None = None

    def record(self, outcome: str, prompt_tokens: int, output_tokens: int) -> None:
        """Count one finished request (successful or not)."""
        self.statuses[outcome] += 1
        self.completed += 1
        self.prompt_tokens += prompt_tokens
        self.output_tokens += output_tokens

    def sample(self, now: float) -> None:
        """Append a timeline point (wall-clock seconds) with the running totals."""
        self.timeline.append(
            {"t": now, "completed": self.completed, "output_tokens": self.output_tokens}
        )

    def to_json(self) -> dict[str, Any]:
        """The side file the runner reads (see :func:`loadtest.reporting.summarize`)."""
        data = asdict(self)
        data["statuses"] = dict(sorted(self.statuses.items()))
        data.pop("gaps_ms")
        data["itl_ms"] = distribution(self.gaps_ms)
        return data
