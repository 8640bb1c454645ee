"""Hand-written bad input that fuzzers rarely produce, against the real engine over HTTP.

Every refusal is a 4xx in OpenAI's error envelope, answered promptly: never a 500, a hang, a
dropped connection or an engine request left behind.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from app.engine.manager import EngineManager
from app.main import create_app
from tests.conftest import make_settings
from tests.support.servers import LoopThread, RunningServer, start_server, stop_server
from tests.support.spec import validate

HELLO = [{"role": "user", "content": "Hi"}]
CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"
SHARED_LIMIT = 64 * 1024  # the shared server's MAX_BODY_BYTES (tests/conftest.py)
ROOMY_LIMIT = 1024 * 1024
PROMPT_IDS = [11, 12, 13]
PROMPT_ERROR_S = 10  # a refusal that takes longer than this counts as a hang


def _error(response: httpx.Response, status: int) -> dict[str, Any]:
    """The error of an OpenAI-shaped error response with ``status``."""
    assert response.status_code == status, response.text
    body = response.json()
    validate("ErrorResponse", body)
    return body["error"]


def _post_raw(http: httpx.Client, path: str, content: bytes, **headers: str) -> httpx.Response:
    started = time.monotonic()
    response = http.post(path, content=content, headers=headers)
    assert time.monotonic() - started < PROMPT_ERROR_S
    return response


def _wait_idle(engine: EngineManager, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while engine.num_unfinished_requests():
        if time.monotonic() > deadline:
            pytest.fail(f"engine still has {engine.num_unfinished_requests()} requests")
        time.sleep(0.05)


def _in_flight(http: httpx.Client) -> int:
    return int(http.get("/resilience/stats").json()["queue"]["in_flight"])


@pytest.fixture(scope="module")
def roomy(loop_thread: LoopThread, engine: EngineManager) -> Iterator[RunningServer]:
    """A second app on the shared engine whose body limit lets 200 kB bodies reach the parser."""
    running = start_server(
        loop_thread, create_app(make_settings(max_body_bytes=ROOMY_LIMIT), engine)
    )
    yield running
    stop_server(running)


@pytest.fixture
def private_server(loop_thread: LoopThread, engine: EngineManager) -> Iterator[RunningServer]:
    """An app of this test alone on the shared engine (its own breaker, opening after two
    failures), for tests that may leave the breaker open."""
    settings = make_settings(resilience={"breaker_fail_max": 2})
    running = start_server(loop_thread, create_app(settings, engine))
    yield running
    stop_server(running)


# -- size and shape of the body ------------------------------------------------------------


@pytest.mark.parametrize("size", [SHARED_LIMIT + 1, 8 * 1024 * 1024])
def test_huge_json_body_is_413(http: httpx.Client, model_id: str, size: int) -> None:
    """A well-formed JSON body over MAX_BODY_BYTES (just over, and 8 MiB) is a 413 with code
    request_too_large, and the server keeps serving."""
    messages = [{"role": "user", "content": "x" * 1000}] * (size // 1000 + 1)
    content = orjson.dumps({"model": model_id, "messages": messages})
    assert len(content) > size
    error = _error(_post_raw(http, CHAT, content, **{"content-type": "application/json"}), 413)
    assert error["code"] == "request_too_large"
    assert http.get("/healthz").status_code == 200


def _nested(depth: int, kind: str) -> bytes:
    if kind == "arrays":
        return b"[" * depth + b"]" * depth
    return b'{"a":' * depth + b"1" + b"}" * depth


@pytest.mark.parametrize("kind", ["arrays", "objects"])
def test_100k_deep_json_is_400(roomy: RunningServer, kind: str) -> None:
    """100,000 nested arrays (or objects) are a prompt 400, not a 500, a hang or a
    RecursionError that takes the connection down; the server answers the next request."""
    content = _nested(100_000, kind)
    assert SHARED_LIMIT < len(content) < ROOMY_LIMIT
    with httpx.Client(base_url=roomy.url, timeout=30) as http:
        response = _post_raw(http, CHAT, content, **{"content-type": "application/json"})
        assert _error(response, 400)["type"] == "invalid_request_error"
        assert http.get("/healthz").status_code == 200


def test_deep_json_in_a_field_is_400(http: httpx.Client, model_id: str) -> None:
    """Deep nesting inside a real field (messages) is a 400 too."""
    content = b'{"model": "%s", "messages": %s}' % (model_id.encode(), _nested(20_000, "arrays"))
    _error(_post_raw(http, CHAT, content, **{"content-type": "application/json"}), 400)


def test_deep_json_over_body_limit_is_413_before_parsing(http: httpx.Client) -> None:
    """On the shared server the same 100k-deep body is over MAX_BODY_BYTES: refused with 413
    before any parser sees it."""
    content = _nested(100_000, "arrays")
    _error(_post_raw(http, CHAT, content, **{"content-type": "application/json"}), 413)


# -- content types and encodings ------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "multipart/form-data; boundary=xyz",
        "application/x-www-form-urlencoded",
        "application/xml",
        None,
    ],
)
def test_non_json_content_type_is_400(
    http: httpx.Client, model_id: str, content_type: str | None
) -> None:
    """A valid JSON body sent as text/plain, multipart, a form, XML or with no Content-Type
    at all is a 400 (the body is not read as JSON), never a 415/422/500."""
    content = orjson.dumps({"model": model_id, "messages": HELLO, "max_tokens": 1})
    headers = {"content-type": content_type} if content_type else {}
    request = http.build_request("POST", CHAT, content=content, headers=headers)
    if content_type is None:
        request.headers.pop("content-type", None)
    assert request.headers.get("content-type") == content_type
    assert _error(http.send(request), 400)["type"] == "invalid_request_error"


def test_real_multipart_upload_is_400(http: httpx.Client) -> None:
    """A real multipart file upload to a JSON route is a 400."""
    files = {"file": ("prompt.json", b'{"model": "m"}', "application/json")}
    _error(http.post(CHAT, files=files), 400)


@pytest.mark.parametrize(
    "raw",
    [
        b"\xff\xfe",  # never valid in UTF-8
        b"\xc3\x28",  # a broken two-byte sequence
        b"\xed\xa0\x80",  # an encoded surrogate
        b"\xc0\xaf",  # an overlong encoding of '/'
        b"abc\xe2\x82",  # truncated at the end of the string
    ],
)
def test_invalid_utf8_body_is_400(http: httpx.Client, model_id: str, raw: bytes) -> None:
    """Invalid UTF-8 bytes inside a JSON string are a 400, not a 500."""
    content = b'{"model": "%s", "messages": [{"role": "user", "content": "%s"}]}' % (
        model_id.encode(),
        raw,
    )
    _error(_post_raw(http, CHAT, content, **{"content-type": "application/json"}), 400)


SURROGATE = "\\ud800"  # JSON's escape for a lone surrogate: valid JSON, invalid text
HI = '"messages": [{"role": "user", "content": "hi"}]'


@pytest.mark.parametrize(
    ("path", "template", "param"),
    [
        (CHAT, '{"model": "<M>", "messages": [{"role": "user", "content": "<S>"}]}', "messages"),
        (CHAT, '{"model": "<M>", "stop": ["<S>"], ' + HI + "}", "stop"),
        (CHAT, '{"model": "<S>", ' + HI + "}", "model"),
        (COMPLETIONS, '{"model": "<M>", "prompt": "a<S>b"}', "prompt"),
        (COMPLETIONS, '{"model": "<M>", "prompt": ["ok", "<S>"]}', "prompt"),
        (COMPLETIONS, '{"model": "<M>", "prompt": "hi", "stop": "<S>"}', "stop"),
        ("/v1/generate", '{"prompt": "<S>"}', "prompt"),
        ("/v1/stream", '{"prompt": "hi", "model": "<S>"}', "model"),
    ],
)
def test_lone_surrogate_escapes_are_400(
    http: httpx.Client, engine: EngineManager, model_id: str, path: str, template: str, param: str
) -> None:
    """A lone surrogate escaped in JSON ("\\ud800") in a prompt, message, stop string or model
    name is a 400 naming the field; it never reaches the tokenizer (500), vLLM (500 plus an
    engine request left behind) or an error message that cannot be encoded (500)."""
    content = template.replace("<M>", model_id).replace("<S>", SURROGATE).encode()
    error = _error(_post_raw(http, path, content, **{"content-type": "application/json"}), 400)
    assert error["param"] is not None and error["param"].startswith(param), error
    assert "surrogate" in error["message"]
    _wait_idle(engine, timeout=5)


# -- parameter bounds ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "extra"),
    [
        (CHAT, {"n": 16}),  # MAX_N
        (CHAT, {"max_tokens": 1}),
        (CHAT, {"logprobs": True, "top_logprobs": 20}),
        (CHAT, {"logprobs": True, "top_logprobs": 0}),
        (CHAT, {"min_tokens": 4, "max_tokens": 4}),
        (CHAT, {"n": 2, "temperature": 0.01}),
        (CHAT, {"top_k": 2**63 - 1}),
        (COMPLETIONS, {"logprobs": 5}),
        (COMPLETIONS, {"logprobs": 0}),
        (COMPLETIONS, {"n": 16}),
    ],
)
def test_parameters_at_their_bounds_are_accepted(
    http: httpx.Client, model_id: str, path: str, extra: dict[str, Any]
) -> None:
    """n, max_tokens, logprobs, top_logprobs, min_tokens and top_k exactly at their limits are
    served (200) with as many choices and alternatives as asked for."""
    prompt = {"messages": HELLO} if path == CHAT else {"prompt": PROMPT_IDS}
    body = {"model": model_id, "max_tokens": 4, **prompt, **extra}
    response = http.post(path, json=body)
    assert response.status_code == 200, response.text
    result = response.json()
    validate("CreateChatCompletionResponse" if path == CHAT else "CreateCompletionResponse", result)
    assert len(result["choices"]) == extra.get("n", 1)
    choice = result["choices"][0]
    if path == CHAT and "top_logprobs" in extra:
        tokens = choice["logprobs"]["content"]
        assert all(len(token["top_logprobs"]) == extra["top_logprobs"] for token in tokens)
    if path == COMPLETIONS and "logprobs" in extra:
        tops = choice["logprobs"]["top_logprobs"]
        assert all(len(top) <= max(extra["logprobs"], 1) for top in tops)


@pytest.mark.parametrize(
    ("path", "extra", "param"),
    [
        (CHAT, {"n": 17}, "n"),
        (CHAT, {"n": 0}, "n"),
        (CHAT, {"max_tokens": 0}, "max_tokens"),
        (CHAT, {"max_completion_tokens": 0}, "max_completion_tokens"),
        (CHAT, {"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        (CHAT, {"logprobs": True, "top_logprobs": -1}, "top_logprobs"),
        (CHAT, {"logprobs": 2}, "logprobs"),
        (CHAT, {"min_tokens": 5, "max_tokens": 4}, "min_tokens"),
        (CHAT, {"n": 2, "temperature": 0}, "n"),  # vLLM: greedy sampling allows only n=1
        (CHAT, {"min_tokens": 5000, "max_tokens": None}, "min_tokens"),
        (CHAT, {"top_k": 2**63}, "top_k"),
        (CHAT, {"top_k": 2**64}, "top_k"),
        (CHAT, {"top_k": -2}, "top_k"),
        (CHAT, {"seed": 2**63}, "seed"),
        (CHAT, {"temperature": 2.0000001}, "temperature"),
        (COMPLETIONS, {"logprobs": 6}, "logprobs"),
        (COMPLETIONS, {"logprobs": -1}, "logprobs"),
        (COMPLETIONS, {"n": 17}, "n"),
        (COMPLETIONS, {"max_tokens": 0}, "max_tokens"),
        (COMPLETIONS, {"min_tokens": 5}, "min_tokens"),
        (COMPLETIONS, {"n": 3, "temperature": 0.0, "stream": True}, "n"),
    ],
)
def test_parameters_past_their_bounds_are_400_naming_them(
    http: httpx.Client,
    engine: EngineManager,
    model_id: str,
    path: str,
    extra: dict[str, Any],
    param: str,
) -> None:
    """One step past a limit is a 400 invalid_request_error whose param names the field,
    decided before the engine sees anything (no 500, nothing left running in vLLM)."""
    prompt = {"messages": HELLO} if path == CHAT else {"prompt": PROMPT_IDS}
    body = {"model": model_id, "max_tokens": 4, **prompt, **extra}
    error = _error(http.post(path, json=body), 400)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param, error
    _wait_idle(engine, timeout=5)


def test_structured_output_schema_nested_too_deep_is_400(
    http: httpx.Client, engine: EngineManager, model_id: str
) -> None:
    """A response_format JSON schema nested 500 levels deep (vLLM allows 64) is a 400 before
    any generation, not a 500 or a grammar compiler stuck on it."""
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(500):
        schema = {"type": "array", "items": schema}
    fmt = {"type": "json_schema", "json_schema": {"name": "deep", "schema": schema}}
    body = {"model": model_id, "messages": HELLO, "max_tokens": 4, "response_format": fmt}
    started = time.monotonic()
    error = _error(http.post(CHAT, json=body), 400)
    assert time.monotonic() - started < PROMPT_ERROR_S
    assert error["type"] == "invalid_request_error"
    _wait_idle(engine, timeout=5)


def _prompt_tokens(http: httpx.Client, path: str, body: dict[str, Any]) -> int:
    response = http.post(path, json={**body, "max_tokens": 1})
    assert response.status_code == 200, response.text
    return int(response.json()["usage"]["prompt_tokens"])


@pytest.mark.parametrize(("path", "param"), [(CHAT, "messages"), (COMPLETIONS, "prompt")])
def test_max_tokens_at_context_limit_accepted_one_more_is_400(
    http: httpx.Client, model_id: str, engine: EngineManager, path: str, param: str
) -> None:
    """max_tokens that fills the context exactly (prompt + max_tokens = max_model_len) is
    served; one more is a 400 context_length_exceeded naming the prompt parameter."""
    body = {"model": model_id, "temperature": 0}
    body |= {"messages": HELLO} if path == CHAT else {"prompt": PROMPT_IDS}
    room = engine.model_info.max_model_len - _prompt_tokens(http, path, body)
    response = http.post(path, json={**body, "max_tokens": room})
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] <= room
    error = _error(http.post(path, json={**body, "max_tokens": room + 1}), 400)
    assert (error["code"], error["param"]) == ("context_length_exceeded", param)


@pytest.mark.parametrize("echo", [False, True], ids=["plain", "echo"])
@pytest.mark.parametrize("token_id", [1_000_000, 2**32 - 1])
def test_prompt_token_id_out_of_vocabulary_is_400(
    http: httpx.Client, engine: EngineManager, model_id: str, token_id: int, echo: bool
) -> None:
    """A token id outside the vocabulary is a 400 from the engine that names the id (echo,
    which decodes the prompt first, included); vLLM is left with nothing running and keeps
    serving."""
    body = {"model": model_id, "prompt": [*PROMPT_IDS, token_id], "max_tokens": 2, "echo": echo}
    error = _error(http.post(COMPLETIONS, json=body), 400)
    assert error["type"] == "invalid_request_error"
    assert str(token_id) in error["message"]
    _wait_idle(engine, timeout=5)
    assert http.post(COMPLETIONS, json={**body, "prompt": PROMPT_IDS}).status_code == 200


@pytest.mark.parametrize("echo", [False, True], ids=["plain", "echo"])
@pytest.mark.parametrize("prompt", [[2**32], [11, -1], [[11], [2**64]]], ids=str)
def test_prompt_token_id_outside_uint32_is_400_naming_prompt(
    http: httpx.Client, model_id: str, prompt: list[Any], echo: bool
) -> None:
    """A token id no tokenizer can hold (negative, or past 32 bits) is a 400 naming prompt,
    before anything decodes it (with echo it used to raise OverflowError: a 500)."""
    body = {"model": model_id, "prompt": prompt, "max_tokens": 2, "echo": echo}
    error = _error(http.post(COMPLETIONS, json=body), 400)
    assert error["param"] == "prompt"
    assert "token ids must be between 0 and" in error["message"]


# -- empty content ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "user", "content": ""}],
        [{"role": "user", "content": None}],
        [{"role": "system", "content": ""}, {"role": "user", "content": ""}],
        [{"role": "user", "content": [{"type": "text", "text": ""}]}],
    ],
)
def test_empty_message_content_is_served(
    http: httpx.Client, model_id: str, messages: list[dict[str, Any]]
) -> None:
    """Messages whose content is empty ("" / null / an empty text part) are valid, as in
    OpenAI's API: the model still gets the chat template and answers with a 200."""
    body = {"model": model_id, "messages": messages, "max_tokens": 3}
    response = http.post(CHAT, json=body)
    assert response.status_code == 200, response.text
    validate("CreateChatCompletionResponse", response.json())
    assert response.json()["usage"]["prompt_tokens"] > 0


def test_empty_messages_list_is_400(http: httpx.Client, model_id: str) -> None:
    """No messages at all is a 400 naming messages."""
    error = _error(http.post(CHAT, json={"model": model_id, "messages": []}), 400)
    assert error["param"] == "messages"


# -- a client that stops reading -------------------------------------------------------------


def _open_silent_stream(server: RunningServer, body: dict[str, Any]) -> socket.socket:
    """POST a streaming request on a socket with a tiny receive buffer; read only the
    status line."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(30)
    sock.connect(("127.0.0.1", server.port))
    payload = orjson.dumps(body)
    head = (
        f"POST {CHAT} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    )
    sock.sendall(head.encode() + payload)
    assert sock.recv(12) == b"HTTP/1.1 200"
    return sock


def test_stream_client_that_reads_nothing_then_closes_leaks_nothing(
    server: RunningServer, http: httpx.Client, engine: EngineManager, model_id: str
) -> None:
    """A streaming client that reads nothing but the status line for a while and then closes
    the socket, mid-generation, leaves nothing behind: the engine drops back to no unfinished
    requests, the admission slot is returned, and a normal request still works."""
    body = {
        "model": model_id,
        "messages": HELLO,
        "stream": True,
        "n": 8,
        "max_tokens": 1000,
        "ignore_eos": True,
    }
    sock = _open_silent_stream(server, body)
    time.sleep(0.5)  # on a fast engine 8 x 1000 tokens took under 1.5 s
    assert engine.num_unfinished_requests() > 0  # still generating: the close must abort it
    sock.close()
    _wait_idle(engine, timeout=60)
    deadline = time.monotonic() + 10
    while _in_flight(http) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _in_flight(http) == 0
    response = http.post(CHAT, json={"model": model_id, "messages": HELLO, "max_tokens": 3})
    assert response.status_code == 200, response.text


# -- deadlines the client chose -------------------------------------------------------------


def test_client_chosen_timeouts_do_not_open_the_breaker(
    private_server: RunningServer, model_id: str
) -> None:
    """A client that asks for an impossible deadline (``timeout`` of a nanosecond) gets its
    504s, but says nothing about the engine's health: the breaker stays closed and the next
    caller is served. (Today, fail_max such requests open it: 503 for everyone.)"""
    body = {"model": model_id, "messages": HELLO, "max_tokens": 4}
    with httpx.Client(base_url=private_server.url, timeout=30) as http:
        for _ in range(3):
            error = _error(http.post(CHAT, json={**body, "timeout": 1e-9}), 504)
            assert error["code"] == "timeout"
        response = http.post(CHAT, json=body)
    assert response.status_code == 200, response.text
