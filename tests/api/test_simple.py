"""The seed project's /v1/generate and /v1/stream."""

from __future__ import annotations

import json

import httpx


def test_generate_json(http: httpx.Client) -> None:
    """/v1/generate returns text, finish reason and usage; max_length is an alias."""
    response = http.post("/v1/generate", json={"prompt": "Once", "max_length": 5, "top_p": 0.9})
    assert response.status_code == 200
    body = response.json()
    assert isinstance(body["text"], str) and body["usage"]["completion_tokens"] <= 5
    assert body["finish_reason"] in ("stop", "length")


def test_stream_sse(http: httpx.Client) -> None:
    """/v1/stream sends text events then [DONE]."""
    with http.stream("POST", "/v1/stream", json={"prompt": "Once", "max_tokens": 4}) as response:
        assert response.status_code == 200
        events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert all("text" in json.loads(event) for event in events[:-1])


def test_generate_validation_error(http: httpx.Client) -> None:
    """A missing prompt is a 400 in OpenAI's error shape."""
    response = http.post("/v1/generate", json={"max_tokens": 5})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "prompt"
