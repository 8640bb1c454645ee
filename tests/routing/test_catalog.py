"""MODELS_FILE validation: a good document loads; each mistake is one clear line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from app.routing.catalog import (
    CatalogError,
    LocalDeploymentSpec,
    OpenAIDeploymentSpec,
    default_catalog,
    load_catalog,
    parse_catalog,
)

GOOD = """
models:
  - id: tiny-llama
    aliases: [default]
    deployments:
      - {name: local-a, kind: local}
      - {name: replica-b, kind: openai, base_url: "http://vllm-b:8000/v1/", api_key_env: B_KEY}
    fallbacks: [tiny-llama-long]
  - id: tiny-llama-long
    deployments: [{name: long, kind: openai, base_url: "http://vllm-long:8000/v1"}]
    context_length: 8192
    tokenizer: /models/tiny-llama
routing: {strategy: least_outstanding}
context_overflow: {tiny-llama: tiny-llama-long}
registry: {url: "http://registry.internal/models", poll_s: 30, cache: .cache/registry.json}
"""


def test_the_issue_example_loads(tmp_path: Path) -> None:
    """The document from the issue loads: kinds, aliases, fallbacks, overflow, registry."""
    path = tmp_path / "models.yaml"
    path.write_text(GOOD, encoding="utf-8")
    catalog = load_catalog(path)
    tiny = catalog.model("default")
    assert tiny is not None and tiny.id == "tiny-llama"
    local, remote = tiny.deployments
    assert isinstance(local, LocalDeploymentSpec) and isinstance(remote, OpenAIDeploymentSpec)
    assert remote.base_url == "http://vllm-b:8000/v1"  # trailing slash dropped
    assert catalog.context_overflow == {"tiny-llama": "tiny-llama-long"}
    assert catalog.registry is not None and catalog.registry.poll_s == 30


def _error(document: dict[str, Any]) -> str:
    with pytest.raises(CatalogError) as caught:
        parse_catalog(document, "MODELS_FILE")
    return str(caught.value)


def _doc(**model: Any) -> dict[str, Any]:
    base = {"id": "m", "deployments": [{"name": "a", "kind": "local"}]}
    return {"models": [{**base, **model}]}


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ({"models": []}, "models: List should have at least 1 item"),
        (_doc(fallbacks=["nope"]), "m.fallbacks names 'nope', which is not a model id"),
        (_doc(deployments=[{"name": "a", "kind": "local"}] * 2), "deployment name 'a' appears"),
        (_doc(aliases=["m"]), "model id or alias 'm' appears twice"),
        (
            _doc(deployments=[{"name": "a", "kind": "openai", "base_url": "ftp://x"}]),
            "models[0].deployments[0].base_url: String should match pattern",
        ),
        (
            _doc(deployments=[{"name": "a", "kind": "openai", "base_url": "http://x/v1"}]),
            "needs tokenizer (a path or hub id) and context_length",
        ),
        (
            _doc(
                deployments=[
                    {
                        "name": "a",
                        "kind": "openai",
                        "base_url": "http://x",
                        "send": "request",
                        "resume": "tokens",
                    }
                ]
            ),
            "resume: tokens needs send: tokens",
        ),
        (_doc(deployments=[{"name": "a", "kind": "local", "max_model_len": 8}]), "max_model_len"),
        (_doc(deployments=[{"name": "a", "kind": "lcoal"}]), "does not match any of the expected"),
        (_doc(deployment=[]), "models[0].deployment: Extra inputs are not permitted"),
        ({**_doc(), "context_overflow": {"m": "other"}}, "context_overflow names 'other'"),
    ],
)
def test_each_mistake_is_one_clear_line(document: dict[str, Any], expected: str) -> None:
    """Refused with the source and the path of the mistake on one line, never a traceback."""
    message = _error(document)
    assert message.startswith("MODELS_FILE: ") and "\n" not in message
    assert expected in message, message


def test_unreadable_or_invalid_yaml_files_are_one_line(tmp_path: Path) -> None:
    """A missing file or broken YAML is also one line naming MODELS_FILE."""
    with pytest.raises(CatalogError, match="cannot read"):
        load_catalog(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("models: [", encoding="utf-8")
    with pytest.raises(CatalogError, match="invalid YAML") as caught:
        load_catalog(broken)
    assert "\n" not in str(caught.value)


def test_without_a_file_the_catalogue_is_todays_one_local_model() -> None:
    """The default catalogue: one model, one local deployment named local."""
    catalog = default_catalog("tiny-llama")
    (model,) = catalog.models
    assert model.id == "tiny-llama" and [d.name for d in model.deployments] == ["local"]
    assert yaml.safe_dump(catalog.model_dump(mode="json"))  # serialisable for the cache
