"""Schemathesis fuzzes every ``/v1`` operation of the app's own OpenAPI schema, over real
HTTP, against the live in-process server and the real engine.

The schema is the app's (``app.openapi()``), narrowed in a copy so that the run exercises
the engine rather than the 404 and context-length paths, stays short, and leaves the shared
server as it found it:

- ``model`` is pinned to the served model, the embedding model for ``/v1/embeddings``
  (negative cases still send other values); the server has both, each on a real engine;
- ``max_tokens`` is required and at most 8 (``max_completion_tokens`` at most 8 too), so no
  generated request asks for the whole context;
- ``timeout`` is left out: a request's own deadline expiring is a 504 that the circuit
  breaker counts as an engine failure, so a few tiny timeouts would open the shared server's
  breaker (see ``test_client_chosen_timeouts_do_not_open_the_breaker`` in test_bad_input.py);
- nothing else: ``n``, ``logprobs``, ``stop``, ``response_format``... keep the app's bounds.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

from app.engine.manager import EngineManager
from app.main import create_app
from app.routing.catalog import EMBED_DEPLOYMENT
from tests.conftest import make_settings
from tests.support.servers import LoopThread, RunningServer, start_server, stop_server

MAX_EXAMPLES = 20  # per operation and mode: 40 requests per operation
OPERATIONS = [
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/completions"),
    ("POST", "/v1/generate"),
    ("POST", "/v1/stream"),
    ("POST", "/v1/embeddings"),
    ("GET", "/v1/models"),
    ("GET", "/v1/models/{model}"),
]
MAX_TOKENS = 8
RESPONSE_TIME_LIMIT_S = 30.0
CHECKS = [
    "not_a_server_error",  # no 5xx
    "status_code_conformance",  # no status the operation does not declare
    "content_type_conformance",
    "response_schema_conformance",  # error bodies match the declared ErrorResponse
]
REQUEST_MODELS = ("ChatCompletionRequest", "CompletionRequest", "SimpleGenerateRequest")

STATUSES: Counter[tuple[str, str, int]] = Counter()  # (operation, mode, status) → requests


def _narrowed(document: dict[str, Any], model_id: str, embed_id: str) -> dict[str, Any]:
    """A copy of the app's schema narrowed as the module docstring says."""
    document = copy.deepcopy(document)
    models = document["components"]["schemas"]
    embedding = models["EmbeddingRequest"]
    embedding["properties"]["model"] = {"type": "string", "enum": [embed_id]}
    del embedding["properties"]["timeout"]
    for name in REQUEST_MODELS:
        model = models[name]
        fields = model["properties"]
        fields["max_tokens"] = {"type": "integer", "minimum": 1, "maximum": MAX_TOKENS}
        model["required"] = sorted({*model.get("required", []), "max_tokens"})
        if "max_completion_tokens" in fields:
            capped = {"type": "integer", "minimum": 1, "maximum": MAX_TOKENS}
            fields["max_completion_tokens"] = {"anyOf": [capped, {"type": "null"}]}
        del fields["timeout"]
        pinned = {"type": "string", "enum": [model_id]}
        fields["model"] = (
            pinned if "model" in model["required"] else {"anyOf": [pinned, {"type": "null"}]}
        )
    return document


@pytest.fixture(scope="module")
def both_models(
    loop_thread: LoopThread, engine: EngineManager, embedding_engine: EngineManager
) -> Iterator[RunningServer]:
    """The default catalogue with generation and embeddings, on the session's engines."""
    settings = make_settings(max_body_bytes=64 * 1024, embedding={"embedding_model": "embedded"})
    engines = {"local": engine, EMBED_DEPLOYMENT: embedding_engine}
    running = start_server(loop_thread, create_app(settings, local_engines=engines))
    yield running
    stop_server(running)


@pytest.fixture(scope="module")
def api_schema(both_models: RunningServer, model_id: str, embedding_engine: EngineManager) -> Any:
    """The app's OpenAPI schema (``/v1`` only), bound to the live server's URL."""
    embed_id = embedding_engine.model_info.served_name
    server = both_models
    schema = schemathesis.openapi.from_dict(_narrowed(server.app.openapi(), model_id, embed_id))
    schema.config.update(base_url=server.url, request_timeout=RESPONSE_TIME_LIMIT_S * 2)
    schema.config.checks.update(
        included_check_names=CHECKS, max_response_time=RESPONSE_TIME_LIMIT_S
    )
    return schema.include(path_regex="^/v1/")


@pytest.fixture(scope="module", autouse=True)
def report_statuses() -> Iterator[None]:
    """Print, once the module is done, which statuses each operation answered with."""
    STATUSES.clear()
    yield
    runs = sorted({(operation, mode) for operation, mode, _ in STATUSES})
    operations = {operation for operation, _ in runs}
    print(f"\nschemathesis: {len(operations)} operations, {STATUSES.total()} requests")
    for run in runs:
        seen = {status: n for (*key, status), n in sorted(STATUSES.items()) if tuple(key) == run}
        print(f"  {' '.join(run)}: {sum(seen.values())} requests, statuses {seen}")


def _label(operation: tuple[str, str]) -> str:
    return " ".join(operation)


def test_every_v1_operation_is_fuzzed(api_schema: Any) -> None:
    """The fuzzed operations below are exactly the /v1 operations the app's schema declares,
    so a new route cannot be left out silently."""
    declared = {result.ok().label for result in api_schema.get_all_operations()}
    assert declared == {_label(operation) for operation in OPERATIONS}


# Every operation with valid input; those with a body also with invalid input (the GET routes
# have nothing that can be invalid: a model id is any string). Each operation's strategy is
# driven with Hypothesis directly: schemathesis.pytest.from_fixture breaks on pytest 9.2
# ("'Function' object has no attribute '_nodeid'").
FUZZ_RUNS = [(*op, GenerationMode.POSITIVE) for op in OPERATIONS] + [
    (*op, GenerationMode.NEGATIVE) for op in OPERATIONS if op[0] == "POST"
]


@pytest.mark.parametrize(
    ("method", "path", "mode"), FUZZ_RUNS, ids=[f"{m} {p} {mode}" for m, p, mode in FUZZ_RUNS]
)
def test_v1_operations_never_5xx_nor_undocumented_statuses(
    api_schema: Any, method: str, path: str, mode: GenerationMode
) -> None:
    """For generated valid (positive) and invalid (negative) requests to every /v1 route:
    no 5xx, no status the route does not declare (400, 401, 403, 404, 413, 422, 429, 503,
    504), the declared content type (JSON or SSE) and error schema, and every answer within
    30 s."""
    operation = api_schema[path][method]

    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    @given(case=operation.as_strategy(mode))
    def fuzz(case: schemathesis.Case) -> None:
        response = case.call_and_validate()
        STATUSES[(f"{method} {path}", mode.value, response.status_code)] += 1

    fuzz()
