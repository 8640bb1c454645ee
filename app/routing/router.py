"""``Router``: the models of one catalogue, resolved to their deployments.

Per request it answers: which model a name means (id or alias, 404 otherwise), which model
a too-long request goes to (``context_overflow``), and in which order to try deployments:
the model's available ones ordered by its strategy, then those of each ``fallbacks`` model
in turn. A router is immutable; a new catalogue makes a new one, swapped in whole, so a
request in flight keeps the router (and deployments) it started with.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from app.auth.keys import Principal
from app.deployments.base import Deployment
from app.engine.tool_protocol import ToolCallParser
from app.errors import EngineUnavailableError, InvalidRequestError, ModelNotFoundError
from app.routing.catalog import Catalog, ModelSpec
from app.routing.strategies import Strategy

Task = Literal["generate", "embed"]
_WRONG_TASK = {
    "generate": "The model `{name}` is an embedding model: use /v1/embeddings.",
    "embed": "The model `{name}` does not make embeddings: name an embedding model.",
}


class Tokenizer(Protocol):
    """A model's tokenizer: the local engine's, or one loaded for remote deployments."""

    @property
    def vocab_size(self) -> int:
        """Token ids (``logit_bias`` keys) run from 0 to ``vocab_size - 1``."""
        ...

    def encode_prompt(self, text: str) -> list[int]: ...

    def encode_chat(
        self, messages: Sequence[dict[str, Any]], tools: list[dict[str, Any]] | None = None
    ) -> list[int]: ...

    def decode(self, token_ids: list[int], skip_special_tokens: bool = True) -> str: ...

    def tool_parser(self, name: str, tools: list[dict[str, Any]]) -> ToolCallParser: ...


class _Ranked:
    """A deployment as the strategies see it."""

    __slots__ = ("deployment",)

    def __init__(self, deployment: Deployment) -> None:
        self.deployment = deployment

    @property
    def name(self) -> str:
        return self.deployment.state.name

    @property
    def load(self) -> int:
        return self.deployment.state.in_flight


@dataclass
class ModelRoute:
    """One model: its spec, deployments, tokenizer and how it orders them."""

    spec: ModelSpec
    deployments: list[Deployment]
    tokenizer: Tokenizer
    strategy: Strategy
    created: int
    tool_call_parser: str | None = None  # vLLM's parser of this model's call syntax

    def tool_parser(self, tools: list[dict[str, Any]]) -> ToolCallParser:
        """A fresh parser for one choice of this model's output (``tool_choice: auto``)."""
        assert self.tool_call_parser is not None
        return self.tokenizer.tool_parser(self.tool_call_parser, tools)

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def max_model_len(self) -> int:
        """``context_length`` when set, else that of the first local engine that knows it
        (503 while every one is still loading for the first time)."""
        if self.spec.context_length is not None:
            return self.spec.context_length
        locals_: list[Any] = [d for d in self.deployments if hasattr(d, "max_model_len")]
        for local in locals_[:-1]:
            with contextlib.suppress(EngineUnavailableError):
                return int(local.max_model_len)
        return int(locals_[-1].max_model_len)

    def ordered(self, key: bytes | None) -> list[Deployment]:
        """Available deployments by the strategy; unavailable ones are not tried."""
        usable = [_Ranked(d) for d in self.deployments if d.ready and d.state.available()]
        if not usable:
            return []
        ranked = self.strategy.order(usable, key)
        free = [r.deployment for r in ranked if not r.deployment.state.saturated]
        return free + [r.deployment for r in ranked if r.deployment.state.saturated]

    @property
    def live(self) -> bool:
        return any(d.ready and d.state.status() != "down" for d in self.deployments)

    def card(self, name: str) -> dict[str, Any]:
        card: dict[str, Any] = {
            "id": name,
            "object": "model",
            "created": self.created,
            "owned_by": "llm-gateway",
        }
        if name != self.id:
            card["root"] = self.id
        with contextlib.suppress(Exception):  # a local engine still loading: no length yet
            card["max_model_len"] = self.max_model_len
        return card


class Router:
    """One catalogue's routes; see the module docstring."""

    def __init__(self, catalog: Catalog, routes: Mapping[str, ModelRoute]) -> None:
        self.catalog = catalog
        self.routes = dict(routes)
        self._names = {
            name: self.routes[model.id]
            for model in catalog.models
            for name in (model.id, *model.aliases)
        }

    @property
    def default(self) -> ModelRoute:
        return self.routes[self.catalog.models[0].id]

    def resolve(
        self, name: str | None, principal: Principal, task: Task | None = "generate"
    ) -> ModelRoute:
        """The model ``name`` means (``None``: the first one of ``task``); 404 for an unknown
        name or one the key may not use — as OpenAI does, a model a key cannot see does not
        exist — and 400 for a model of the other task (``task=None``: any model)."""
        route = self._first(task or "generate") if name is None else self._names.get(name)
        if route is None and name is None:
            raise ModelNotFoundError(
                "No model of this gateway serves this endpoint.", param="model"
            )
        if route is None or not (principal.can_use(route.id) or principal.can_use(name or "")):
            raise ModelNotFoundError(
                f"The model `{name}` does not exist or you do not have access to it.",
                param="model",
            )
        if task is not None and route.spec.task != task:
            raise InvalidRequestError(_WRONG_TASK[task].format(name=name), param="model")
        return route

    def _first(self, task: Task) -> ModelRoute | None:
        return next((r for r in self.routes.values() if r.spec.task == task), None)

    def overflow(self, route: ModelRoute) -> ModelRoute | None:
        target = self.catalog.context_overflow.get(route.id)
        return self.routes[target] if target is not None else None

    def plan(self, route: ModelRoute, key: bytes | None) -> list[tuple[ModelRoute, Deployment]]:
        """Where to try a request, in order: the model's deployments, then its fallbacks'."""
        plan = [(route, d) for d in route.ordered(key)]
        for fallback in route.spec.fallbacks:
            other = self.routes[fallback]
            plan += [(other, d) for d in other.ordered(key)]
        return plan

    def cards(self, principal: Principal) -> list[dict[str, Any]]:
        """``GET /v1/models``: every model and alias the key may use."""
        return [
            route.card(name)
            for name, route in self._names.items()
            if principal.can_use(route.id) or principal.can_use(name)
        ]

    def unavailable_models(self) -> list[str]:
        """Models with no live deployment and no live fallback."""
        return [
            route.id
            for route in self.routes.values()
            if not route.live and not any(self.routes[f].live for f in route.spec.fallbacks)
        ]

    def deployments(self) -> list[Deployment]:
        return [d for route in self.routes.values() for d in route.deployments]
