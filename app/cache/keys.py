"""The response cache's key: a hash of everything that changes an answer, nothing else.

What goes in:

- the model id and the *weights identity* of every deployment that may answer it (a local
  model's path and revision; a remote one's URL and upstream model), so a catalogue that
  swaps weights under the same name starts a fresh cache;
- the canonical prompt: the rendered, tokenized prompt's token ids (two requests that differ
  only in how their JSON was written share an entry; any change in the messages does not);
- every engine sampling field (:class:`~app.engine.protocol.SamplingOptions`, all of them,
  read off the dataclass: a new sampling field is in the key the day it is added);
- the request fields that shape the answer but not the engine's work (which endpoint,
  chat logprobs format, ``echo``, ``return_token_ids``...): :data:`RESPONSE_SHAPING`;
- the API key's name, unless ``CACHE_SCOPE=global``.

Fields that change neither the engine's work nor the answer are listed, with why, in
:data:`NOT_IN_KEY`; a test fails when a request model gains a field that is in neither
list, so nobody can add one without deciding.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from app.engine.protocol import SamplingOptions

KEY_VERSION = "v1"  # bump to orphan every entry when the answer format changes

# Request fields that shape the answer but reach the engine through no sampling field.
# Tools are rendered into the prompt too, but they (and the choice among them) also decide
# how the text is read for calls, so they are in the key as written.
RESPONSE_SHAPING = (
    "logprobs", "top_logprobs", "echo", "return_token_ids", "response_format",
    "tools", "tool_choice", "parallel_tool_calls",
)  # fmt: skip

# Request fields deliberately left out of the key, and why.
NOT_IN_KEY: Mapping[str, str] = {
    "model": "resolved to the model id, in the key",
    "messages": "rendered and tokenized: the prompt's token ids are in the key",
    "prompt": "tokenized: the prompt's token ids are in the key",
    "stream": "a streamed answer replays as a non-streamed one and back",
    "stream_options": "usage is recomputed on replay",
    "user": "identifies the end user, not the answer (the key is scoped per API key)",
    "priority": "scheduling only",
    "timeout": "a deadline, not the answer",
    "max_length": "an alias of max_tokens (in the key, via the sampling options)",
    # Sampling fields: in the key through SamplingOptions (the engine's view of them).
    "max_tokens": "in the sampling options",
    "max_completion_tokens": "in the sampling options (as max_tokens)",
    "temperature": "in the sampling options",
    "top_p": "in the sampling options",
    "top_k": "in the sampling options",
    "min_p": "in the sampling options",
    "n": "in the sampling options",
    "seed": "in the sampling options",
    "stop": "in the sampling options",
    "presence_penalty": "in the sampling options",
    "frequency_penalty": "in the sampling options",
    "repetition_penalty": "in the sampling options",
    "min_tokens": "in the sampling options",
    "ignore_eos": "in the sampling options",
    "logit_bias": "in the sampling options (as token id -> bias)",
    "skip_special_tokens": "in the sampling options",
}


def cache_key(
    *,
    endpoint: str,
    model: str,
    weights: Sequence[str],
    prompt_ids: Sequence[Sequence[int]],
    options: SamplingOptions,
    shaping: Mapping[str, Any],
    scope: str | None,
) -> str:
    """The hex key of one request (see the module docstring for what goes in)."""
    document = {
        "v": KEY_VERSION,
        "endpoint": endpoint,
        "model": model,
        "weights": sorted(weights),
        "prompt": [list(ids) for ids in prompt_ids],
        "options": dataclasses.asdict(options),
        "shaping": {name: shaping.get(name) for name in RESPONSE_SHAPING},
        "scope": scope,
    }
    encoded = orjson.dumps(document, option=orjson.OPT_SORT_KEYS, default=_plain)
    return hashlib.sha256(encoded).hexdigest()


def _plain(value: Any) -> Any:
    """Pydantic models (a response_format) as their JSON data."""
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return dump(mode="json", by_alias=True)
    raise TypeError(f"cannot put {type(value).__name__} in a cache key")


def deterministic(options: SamplingOptions) -> bool:
    """Whether the same request gives the same answer: greedy (temperature 0 or top_k 1) or
    seeded; never several sampled choices."""
    if options.n > 1:
        return False
    return options.temperature == 0 or options.top_k == 1 or options.seed is not None
