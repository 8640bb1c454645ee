"""/v1/models and /v1/models/{id}."""

from __future__ import annotations

import openai
import pytest
from openai import OpenAI

from tests.support.spec import validate


def test_list_models(client: OpenAI, model_id: str) -> None:
    """The served model is listed in OpenAI's shape."""
    page = client.models.list()
    validate("ListModelsResponse", page.model_dump(exclude_unset=True))
    assert [m.id for m in page.data] == [model_id]


def test_retrieve_model(client: OpenAI, model_id: str) -> None:
    """The served model can be retrieved by id."""
    model = client.models.retrieve(model_id)
    validate("Model", model.model_dump(exclude_unset=True))
    assert model.id == model_id


def test_retrieve_unknown_model_is_404(client: OpenAI) -> None:
    """Any other id is a 404 in OpenAI's error shape."""
    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve("no-such-model")
    validate("ErrorResponse", caught.value.response.json())
