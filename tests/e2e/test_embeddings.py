"""``/v1/embeddings`` against the real pooling engine (the embedded model's weights, as
``python dev.py run`` serves them), with the official SDK and OpenAI's response schema.

The pipeline's bounds, admission, failover and cancellation on scripted engines:
tests/services/test_embeddings_scripted.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml
from openai import BadRequestError, OpenAI

from app.engine.default_model import DEFAULT_MODEL_DIR
from app.engine.manager import EngineManager
from app.main import create_app
from app.routing.catalog import EMBED_DEPLOYMENT
from app.routing.settings import RoutingSettings
from tests.conftest import make_settings
from tests.support.servers import LoopThread, RunningServer, start_server, stop_server
from tests.support.spec import validate


@pytest.fixture(scope="module")
def embedding_server(
    loop_thread: LoopThread, engine: EngineManager, embedding_engine: EngineManager
) -> Iterator[RunningServer]:
    """The default catalogue with both models: generation and embeddings, real engines."""
    settings = make_settings(embedding={"embedding_model": "embedded"})
    engines = {"local": engine, EMBED_DEPLOYMENT: embedding_engine}
    running = start_server(loop_thread, create_app(settings, local_engines=engines))
    yield running
    stop_server(running)


@pytest.fixture
def sdk(embedding_server: RunningServer) -> Iterator[OpenAI]:
    with OpenAI(base_url=embedding_server.base_url, api_key="k", max_retries=0) as client:
        yield client


@pytest.fixture(scope="module")
def embed_model(embedding_engine: EngineManager) -> str:
    return embedding_engine.model_info.served_name


def _vector(sdk: OpenAI, model: str, value: object, **extra: object) -> np.ndarray:
    reply = sdk.embeddings.create(model=model, input=value, **extra)  # type: ignore[arg-type]
    return np.asarray(reply.data[0].embedding)


def test_the_sdk_embeds_strings_and_token_ids(
    sdk: OpenAI, embed_model: str, embedding_engine: EngineManager
) -> None:
    """The SDK's default (base64) decodes to unit vectors of the model's width, one per input
    in order; a string and its token ids embed alike; a batch equals its inputs one by one."""
    width = embedding_engine.model_info.embedding_size
    texts = ["The cat sat on the mat.", "Quantum chromodynamics", "The cat sat on the mat."]
    batch = sdk.embeddings.create(model=embed_model, input=texts)
    vectors = [np.asarray(item.embedding) for item in batch.data]
    assert [item.index for item in batch.data] == [0, 1, 2]
    assert all(v.shape == (width,) for v in vectors) and width > 0
    assert all(abs(np.linalg.norm(v) - 1) < 1e-3 for v in vectors)
    assert np.allclose(vectors[0], vectors[2], atol=1e-5)
    assert not np.allclose(vectors[0], vectors[1], atol=1e-2)
    for text, vector in zip(texts[:2], vectors[:2], strict=True):
        assert np.allclose(_vector(sdk, embed_model, text), vector, atol=1e-4)
    ids = embedding_engine.encode_prompt(texts[0])
    assert np.allclose(_vector(sdk, embed_model, ids), vectors[0], atol=1e-4)
    lists = sdk.embeddings.create(model=embed_model, input=[ids, ids[:3]])
    assert np.allclose(lists.data[0].embedding, vectors[0], atol=1e-4)
    assert batch.usage.prompt_tokens == 2 * len(ids) + len(embedding_engine.encode_prompt(texts[1]))


def test_floats_validate_against_openais_schema(
    embedding_server: RunningServer, embed_model: str
) -> None:
    body = {"model": embed_model, "input": ["a b c", "d"], "encoding_format": "float"}
    reply = httpx.post(embedding_server.url + "/v1/embeddings", json=body, timeout=60)
    assert reply.status_code == 200, reply.text
    validate("CreateEmbeddingResponse", reply.json())
    assert reply.json()["model"] == embed_model
    assert reply.headers["X-Deployment"] == EMBED_DEPLOYMENT
    usage = reply.json()["usage"]
    assert usage["prompt_tokens"] == usage["total_tokens"] > 0


def test_dimensions_shorten_to_a_renormalised_prefix(sdk: OpenAI, embed_model: str) -> None:
    """The embedded embedder is Matryoshka: ``dimensions`` is the full vector's prefix, made a
    unit vector again, as for any Matryoshka model; a length the model lacks is a 400."""
    full = _vector(sdk, embed_model, "Hello there")
    short = _vector(sdk, embed_model, "Hello there", dimensions=16)
    assert short.shape == (16,)
    assert np.allclose(short, full[:16] / np.linalg.norm(full[:16]), atol=1e-4)
    with pytest.raises(BadRequestError) as refused:
        _vector(sdk, embed_model, "Hello", dimensions=full.shape[0] + 1)
    assert refused.value.body["param"] == "dimensions"  # type: ignore[index]


def test_each_model_answers_only_its_own_task(sdk: OpenAI, embed_model: str, model_id: str) -> None:
    listed = {model.id for model in sdk.models.list()}
    assert {model_id, embed_model} <= listed
    with pytest.raises(BadRequestError) as chat:
        sdk.chat.completions.create(
            model=embed_model, messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )
    assert chat.value.body["param"] == "model"  # type: ignore[index]
    with pytest.raises(BadRequestError) as embed:
        sdk.embeddings.create(model=model_id, input="hi")
    assert embed.value.body["param"] == "model"  # type: ignore[index]
    served = sdk.chat.completions.create(
        model=model_id, messages=[{"role": "user", "content": "hi"}], max_tokens=2
    )
    assert served.choices[0].message.content is not None


def test_an_input_over_the_context_is_a_400_before_the_engine(
    embedding_server: RunningServer, embed_model: str, embedding_engine: EngineManager
) -> None:
    limit = embedding_engine.model_info.max_model_len
    body = {"model": embed_model, "input": [[5, 6], [5] * (limit + 1)]}
    reply = httpx.post(embedding_server.url + "/v1/embeddings", json=body, timeout=60)
    assert reply.status_code == 400
    error = reply.json()["error"]
    assert error["code"] == "context_length_exceeded" and "input[1]" in error["message"]


@pytest.fixture(scope="module")
def front(
    loop_thread: LoopThread,
    embedding_server: RunningServer,
    embed_model: str,
    embedding_engine: EngineManager,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RunningServer]:
    """A gateway with no engine of its own, routing an embedding model to the gateway above
    (a second server on loopback, real HTTP) as a ``kind: openai`` deployment."""
    document = {
        "models": [
            {
                "id": "remote-embed",
                "task": "embed",
                "deployments": [
                    {"name": "embed-b", "kind": "openai", "model": embed_model,
                     "base_url": embedding_server.base_url}
                ],
                "tokenizer": str(DEFAULT_MODEL_DIR),
                "context_length": embedding_engine.model_info.max_model_len,
            }
        ]
    }  # fmt: skip
    path = Path(tmp_path_factory.mktemp("models")) / "models.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    settings = make_settings()
    settings.routing = RoutingSettings(models_file=path)
    running = start_server(loop_thread, create_app(settings, local_engines={}))
    yield running
    stop_server(running)


def test_a_remote_embedding_model_answers_as_its_server_does(
    front: RunningServer, sdk: OpenAI, embed_model: str, embedding_engine: EngineManager
) -> None:
    """Through the front gateway (which tokenizes and sends token ids), each input's vector
    is the one its server gives directly, in input order, with the same usage; who served
    is in the headers; an input over the context is refused before anything is sent."""
    texts = ["The cat sat on the mat.", "Quantum chromodynamics", "a b c"]
    direct = sdk.embeddings.create(model=embed_model, input=texts)
    with OpenAI(base_url=front.base_url, api_key="k", max_retries=0) as client:
        reply = client.embeddings.with_raw_response.create(model="remote-embed", input=texts)
    proxied = reply.parse()
    assert (reply.headers["X-Model"], reply.headers["X-Deployment"]) == ("remote-embed", "embed-b")
    assert [item.index for item in proxied.data] == [0, 1, 2]
    for mine, theirs in zip(proxied.data, direct.data, strict=True):
        assert np.allclose(mine.embedding, theirs.embedding, atol=1e-4)
    assert proxied.model == "remote-embed"
    assert proxied.usage.prompt_tokens == direct.usage.prompt_tokens
    limit = embedding_engine.model_info.max_model_len
    body = {"model": "remote-embed", "input": [[5] * (limit + 1)]}
    refused = httpx.post(front.url + "/v1/embeddings", json=body, timeout=60)
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "context_length_exceeded"
