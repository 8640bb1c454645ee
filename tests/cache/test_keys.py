"""The cache key: every field that changes an answer changes the key, nothing else does, and
no request field can be added without deciding which it is."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from app.cache.keys import NOT_IN_KEY, RESPONSE_SHAPING, cache_key, deterministic
from app.engine.protocol import SamplingOptions
from app.schemas.openai import ChatCompletionRequest, CompletionRequest, SimpleGenerateRequest

BASE: dict[str, Any] = {
    "endpoint": "chatcmpl",
    "model": "tiny-llama",
    "weights": ["local:/models/tiny:1"],
    "prompt_ids": [[1, 2, 3]],
    "options": SamplingOptions(max_tokens=16, temperature=0.0),
    "shaping": {},
    "scope": "alice",
}
OPTION_FIELDS = {f.name for f in dataclasses.fields(SamplingOptions)}


@pytest.mark.parametrize("model", [ChatCompletionRequest, CompletionRequest, SimpleGenerateRequest])
def test_every_request_field_is_in_the_key_or_left_out_for_a_reason(model: Any) -> None:
    """A field a request model gains must be put in RESPONSE_SHAPING, reach the engine as a
    sampling option, or be listed in NOT_IN_KEY with why — or this fails."""
    for name, info in model.model_fields.items():
        names = {name, info.alias or name}
        decided = names & (set(RESPONSE_SHAPING) | set(NOT_IN_KEY) | OPTION_FIELDS)
        assert decided, f"{model.__name__}.{name}: in the cache key or not? (app/cache/keys.py)"


def _changed(value: Any) -> Any:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value + 1
    if isinstance(value, list):
        return [*value, "x"]
    if value is None:
        return 7
    if isinstance(value, dict):
        return {"type": "object"}
    raise AssertionError(value)


@pytest.mark.parametrize("field", sorted(OPTION_FIELDS))
def test_each_sampling_option_changes_the_key(field: str) -> None:
    options = BASE["options"]
    changed = dataclasses.replace(options, **{field: _changed(getattr(options, field))})
    assert cache_key(**{**BASE, "options": changed}) != cache_key(**BASE)


@pytest.mark.parametrize("field", RESPONSE_SHAPING)
def test_each_response_shaping_field_changes_the_key(field: str) -> None:
    assert cache_key(**{**BASE, "shaping": {field: True}}) != cache_key(**BASE)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("endpoint", "cmpl"),
        ("model", "other"),
        ("weights", ["local:/models/tiny:2"]),  # the same model id, rebuilt weights
        ("prompt_ids", [[1, 2, 4]]),
        ("scope", "bob"),
        ("scope", None),
    ],
)
def test_model_weights_prompt_and_scope_change_the_key(name: str, value: Any) -> None:
    assert cache_key(**{**BASE, name: value}) != cache_key(**BASE)


def test_what_does_not_change_an_answer_does_not_change_the_key() -> None:
    """The order deployments are listed in is not an answer's."""
    two = {**BASE, "weights": ["a", "b"]}
    assert cache_key(**two) == cache_key(**{**two, "weights": ["b", "a"]})


@pytest.mark.parametrize(
    ("options", "cacheable"),
    [
        (SamplingOptions(temperature=0.0), True),
        (SamplingOptions(temperature=1.0, top_k=1), True),
        (SamplingOptions(temperature=0.9, seed=3), True),
        (SamplingOptions(temperature=0.9), False),
        (SamplingOptions(temperature=0.9, seed=3, n=2), False),
    ],
)
def test_only_deterministic_requests_are_cached(options: SamplingOptions, cacheable: bool) -> None:
    assert deterministic(options) is cacheable
