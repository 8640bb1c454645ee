"""``logit_bias`` on /v1/completions and /v1/chat/completions against the real engine:
-100 forbids the greedy token (the runner-up takes its place), +100 forces a token."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from openai import OpenAI

from app.engine.manager import EngineManager
from app.schemas.logit_bias import MAX_LOGIT_BIAS
from tests.support.spec import validate, validate_completion_chunk

PROMPT = "Once upon a time"
FORCED = " hop"  # one token of the embedded vocabulary


def _token_id(engine: EngineManager, text: str) -> int:
    (token,) = engine.encode_prompt(text)[1:]  # after BOS
    return token


def test_minus_100_forbids_the_greedy_token(client: OpenAI, model_id: str, engine: EngineManager):
    """Greedy decoding with the top token biased by -100 picks what was second."""
    common: Any = {"model": model_id, "prompt": PROMPT, "max_tokens": 1, "temperature": 0}
    plain = client.completions.create(logprobs=2, **common).choices[0]
    assert plain.logprobs is not None and plain.logprobs.top_logprobs
    top = plain.logprobs.top_logprobs[0]
    first, second = sorted(top, key=lambda token: -top[token])
    assert plain.text == first
    biased = client.completions.create(
        logit_bias={str(_token_id(engine, first)): -100}, **common
    ).choices[0]
    assert biased.text == second


def test_plus_100_forces_a_token_in_completions_streamed_or_not(
    client: OpenAI, http: httpx.Client, model_id: str, engine: EngineManager
) -> None:
    """+100 on one token makes every greedy step choose it, streamed or not."""
    body = {"model": model_id, "prompt": PROMPT, "max_tokens": 3, "temperature": 0}
    bias = {str(_token_id(engine, FORCED)): 100}
    reply = client.completions.create(logit_bias=bias, **body)  # type: ignore[arg-type]
    validate("CreateCompletionResponse", reply.model_dump(exclude_unset=True))
    assert reply.choices[0].text == FORCED * 3
    with http.stream(
        "POST", "/v1/completions", json={**body, "logit_bias": bias, "stream": True}
    ) as response:
        chunks = [line[6:] for line in response.iter_lines() if line.startswith("data: {")]
    parsed = [httpx.Response(200, content=chunk).json() for chunk in chunks]
    for chunk in parsed:
        validate_completion_chunk(chunk)
    assert "".join(c["choices"][0]["text"] for c in parsed) == FORCED * 3


def test_chat_logit_bias_forces_and_forbids(
    client: OpenAI, model_id: str, engine: EngineManager
) -> None:
    """Chat honours the same biases: +100 forces the token, -100 removes the greedy one."""
    common: Any = {
        "model": model_id,
        "messages": [{"role": "user", "content": "Hi"}],
        "temperature": 0,
        "max_tokens": 3,
    }
    forced = client.chat.completions.create(
        logit_bias={str(_token_id(engine, FORCED)): 100}, **common
    )
    validate("CreateChatCompletionResponse", forced.model_dump(exclude_unset=True))
    assert forced.choices[0].message.content == FORCED * 3
    plain = client.chat.completions.create(logprobs=True, top_logprobs=1, **common).choices[0]
    assert plain.logprobs is not None and plain.logprobs.content
    greedy = plain.logprobs.content[0].token
    forbidden = client.chat.completions.create(
        logit_bias={str(_token_id(engine, greedy)): -100}, **common
    )
    assert not (forbidden.choices[0].message.content or "").startswith(greedy)


@pytest.mark.parametrize("route", ["/v1/completions", "/v1/chat/completions"])
@pytest.mark.parametrize(
    ("bias", "words"),
    [
        pytest.param({"4096": 1}, "4096", id="out-of-vocabulary"),
        pytest.param({str(i): 1 for i in range(MAX_LOGIT_BIAS + 1)}, "300", id="too-many"),
        pytest.param({"5": 100.5}, "between -100 and 100", id="bias-too-large"),
        pytest.param({"-1": 1}, "token ids", id="negative-id"),
        pytest.param({"abc": 1}, "token ids", id="not-an-id"),
    ],
)
def test_bad_logit_bias_is_a_400_naming_it(
    http: httpx.Client, model_id: str, route: str, bias: dict[str, float], words: str
) -> None:
    """Out-of-vocabulary ids, more than 300 entries, biases beyond ±100 and keys that are
    not token ids: 400, param logit_bias, OpenAI's envelope."""
    body: dict[str, Any] = {"model": model_id, "max_tokens": 1, "logit_bias": bias}
    body |= (
        {"prompt": "Hi"}
        if route == "/v1/completions"
        else {"messages": [{"role": "user", "content": "Hi"}]}
    )
    response = http.post(route, json=body)
    assert response.status_code == 400, response.text
    validate("ErrorResponse", response.json())
    error = response.json()["error"]
    assert error["param"] == "logit_bias" and words in error["message"]
