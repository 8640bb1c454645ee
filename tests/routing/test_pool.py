"""The pool turns a catalogue into routes: each model's tool-call parser, checked."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from app.config import Settings
from app.engine.default_model import DEFAULT_MODEL_DIR, ensure_default_model
from app.observability.metrics import GatewayMetrics
from app.routing.catalog import CatalogError, parse_catalog
from app.routing.pool import DeploymentPool
from tests.support.scripted_engine import ScriptedEngine


def _pool(**engine: Any) -> DeploymentPool:
    settings = Settings()
    settings = settings.model_copy(update={"engine": settings.engine.model_copy(update=engine)})
    given = {"a": ScriptedEngine(), "b": ScriptedEngine()}
    return DeploymentPool(settings, GatewayMetrics(CollectorRegistry()), given)


def _catalog(**first: Any) -> Any:
    return parse_catalog(
        {
            "models": [
                {"id": "m1", "deployments": [{"name": "a", "kind": "local"}], **first},
                {"id": "m2", "deployments": [{"name": "b", "kind": "local"}]},
            ]
        },
        "test",
    )


def test_a_models_parser_overrides_tool_call_parser_and_the_rest_inherit_it() -> None:
    router, _, _ = _pool(tool_call_parser="hermes").build(_catalog(tool_call_parser="mistral"))
    assert router.routes["m1"].tool_call_parser == "mistral"
    assert router.routes["m2"].tool_call_parser == "hermes"
    plain, _, _ = _pool().build(_catalog())
    assert plain.routes["m1"].tool_call_parser is None


def test_an_unknown_parser_is_a_catalogue_error_naming_the_model_and_the_known_ones() -> None:
    with pytest.raises(CatalogError) as caught:
        _pool().build(_catalog(tool_call_parser="hermess"))
    message = str(caught.value)
    assert "models[m1].tool_call_parser" in message and "'hermess'" in message
    assert "hermes" in message.replace("'hermess'", "")


def test_a_remote_models_parser_must_fit_its_tokenizer() -> None:
    """Without a local engine to check it at start, the catalogue checks it: the embedded
    tokenizer writes Hermes calls, and has no ``[TOOL_CALLS]`` token for mistral's."""
    ensure_default_model()
    remote = {
        "id": "far",
        "deployments": [{"name": "r", "kind": "openai", "base_url": "http://127.0.0.1:9/v1"}],
        "tokenizer": str(DEFAULT_MODEL_DIR),
        "context_length": 1024,
    }
    fits, _, _ = _pool().build(
        parse_catalog({"models": [remote | {"tool_call_parser": "hermes"}]}, "t")
    )
    assert fits.routes["far"].tool_parser([]).parse("hi").content == "hi"
    with pytest.raises(CatalogError, match=r"models\[far\].tool_call_parser: .*does not fit"):
        _pool().build(parse_catalog({"models": [remote | {"tool_call_parser": "mistral"}]}, "t"))
