"""Every client mistake gets OpenAI's error envelope and the right status, never a 500."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest
from openai import OpenAI

from tests.support.spec import validate

HELLO = [{"role": "user", "content": "Hi"}]


def _error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    validate("ErrorResponse", body)
    return body["error"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": HELLO}, "model"),
        ({"model": "m"}, "messages"),
        ({"model": "m", "messages": []}, "messages"),
        ({"model": "m", "messages": HELLO, "temperature": 3}, "temperature"),
        ({"model": "m", "messages": HELLO, "top_p": 0}, "top_p"),
        ({"model": "m", "messages": HELLO, "n": 0}, "n"),
        ({"model": "m", "messages": HELLO, "max_tokens": 0}, "max_tokens"),
        ({"model": "m", "messages": HELLO, "top_logprobs": 21}, "top_logprobs"),
        ({"model": "m", "messages": HELLO, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"model": "m", "messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
        (
            {"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            "messages.0.content",
        ),
    ],
)
def test_invalid_chat_parameters_are_400(http: httpx.Client, body: dict, param: str) -> None:
    """Invalid bodies give 400 (not FastAPI's 422 shape) naming the parameter."""
    error = _error(http.post("/v1/chat/completions", json=body), 400)
    assert error["type"] == "invalid_request_error"
    assert error["param"] is not None and error["param"].startswith(param)


def test_invalid_json_is_400(http: httpx.Client) -> None:
    """A body that is not JSON is a 400."""
    response = http.post(
        "/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert "not valid JSON" in _error(response, 400)["message"]


def test_wrong_content_type_is_400(http: httpx.Client) -> None:
    """A form body where JSON is expected is a 400, not a 500."""
    _error(
        http.post("/v1/chat/completions", content=b"a=b", headers={"content-type": "text/plain"}),
        400,
    )


def test_unknown_model_is_404(client: OpenAI) -> None:
    """An unknown model is a 404 with code model_not_found."""
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-9", messages=HELLO)  # type: ignore[arg-type]
    assert caught.value.code == "model_not_found"


def test_unknown_route_is_404(http: httpx.Client) -> None:
    """Unknown routes answer in OpenAI's error shape too."""
    _error(http.get("/v1/nothing-here"), 404)


def test_wrong_method_is_405(http: httpx.Client) -> None:
    """A GET on a POST route is a 405 in OpenAI's shape."""
    _error(http.get("/v1/chat/completions"), 405)


def test_context_overflow_is_400_naming_limits(client: OpenAI, model_id: str) -> None:
    """prompt + max_tokens beyond the context is a 400 that names both numbers."""
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=model_id, messages=HELLO, max_tokens=5000)
    error = caught.value.body
    assert isinstance(error, dict) and error["code"] == "context_length_exceeded"
    assert "1024" in error["message"] and "5000" in error["message"]


def test_prompt_longer_than_context_is_400(client: OpenAI, model_id: str) -> None:
    """A prompt alone longer than the context is a 400, even without max_tokens."""
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=model_id, prompt="word " * 3000, max_tokens=1)


def test_streaming_request_errors_before_the_stream(http: httpx.Client, model_id: str) -> None:
    """A streaming request that cannot run gets a status code, not a 200 stream."""
    body = {"model": model_id, "messages": HELLO, "max_tokens": 5000, "stream": True}
    _error(http.post("/v1/chat/completions", json=body), 400)


def test_n_above_server_limit_is_400(http: httpx.Client, model_id: str) -> None:
    """n above MAX_N is refused with param 'n'."""
    body = {"model": model_id, "messages": HELLO, "n": 100}
    assert _error(http.post("/v1/chat/completions", json=body), 400)["param"] == "n"


def test_body_over_limit_is_413(http: httpx.Client, model_id: str) -> None:
    """A body over MAX_BODY_BYTES is a 413 (declared length)."""
    body = {"model": model_id, "messages": [{"role": "user", "content": "x" * 70_000}]}
    _error(http.post("/v1/chat/completions", json=body), 413)


def test_chunked_body_over_limit_is_413(http: httpx.Client) -> None:
    """A chunked body without Content-Length is counted and refused with 413."""

    def chunks() -> Iterator[bytes]:
        yield b'{"model": "m", "messages": [{"role": "user", "content": "'
        for _ in range(80):
            yield b"x" * 1024
        yield b'"}]}'

    _error(http.post("/v1/chat/completions", content=chunks()), 413)
