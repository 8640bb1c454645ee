"""How the rendered router overlay fits together, read the way the router reads it: its
MODELS_FILE (parsed by the gateway's own ``parse_catalog``), each deployment's ``base_url``
resolved through the overlay's Services to the engine pods behind them, and each engine's
settings as that engine reads them (the gateway's own settings classes for a gateway engine,
the ``$(VAR)``-expanded flags of ``vllm serve`` for vLLM's server).

Shared by test_k8s_router.py and test_k8s_engines.py; nothing here talks to a cluster."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, TypeVar
from urllib.parse import urlsplit

import yaml
from pydantic_settings import BaseSettings

from app.routing.catalog import Catalog, parse_catalog
from tests.infra.conftest import container_env, find, gateway, main_container

Docs = list[dict[str, Any]]
S = TypeVar("S", bound=BaseSettings)
VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")
# vLLM's idle keep-alive when VLLM_HTTP_TIMEOUT_KEEP_ALIVE is unset (vllm/envs.py).
VLLM_DEFAULT_KEEP_ALIVE_S = 5


def router_env(docs: Docs) -> dict[str, str]:
    return container_env(docs, gateway(docs), "gateway")


def settings_from(cls: type[S], env: dict[str, str]) -> S:
    """``cls`` as the gateway would build it from ``env`` alone (not this process's
    environment): the gateway's own validation and defaults."""

    class FromEnvOnly(cls):  # type: ignore[valid-type,misc]
        @classmethod
        def settings_customise_sources(
            cls, settings_cls: Any, init_settings: Any, **_: Any
        ) -> tuple[Any, ...]:
            return (init_settings,)

    return FromEnvOnly(**{key.lower(): value for key, value in env.items()})  # type: ignore


def models_mount(docs: Docs) -> tuple[dict[str, Any], dict[str, Any], str]:
    """(volume, mount, file name) that MODELS_FILE lies in, in the router container."""
    path = PurePosixPath(router_env(docs)["MODELS_FILE"])
    router = gateway(docs)
    mounts = [m for m in main_container(router)["volumeMounts"] if m["mountPath"] == str(
        path.parent)]  # fmt: skip
    assert len(mounts) == 1, f"no volume is mounted at {path.parent}"
    volumes = {v["name"]: v for v in router["spec"]["template"]["spec"]["volumes"]}
    return volumes[mounts[0]["name"]], mounts[0], path.name


def models_document(docs: Docs) -> Any:
    """MODELS_FILE's YAML as the router reads it (from the mounted ConfigMap)."""
    volume, _, name = models_mount(docs)
    config = find(docs, "ConfigMap", volume["configMap"]["name"])
    return yaml.safe_load(config["data"][name])


def catalog_of(docs: Docs) -> Catalog:
    return parse_catalog(models_document(docs), "overlays/router models.yaml")


def edit_models(docs: Docs, change: Callable[[Any], None]) -> Docs:
    """A copy of ``docs`` whose MODELS_FILE went through ``change`` (a broken copy)."""
    broken = copy.deepcopy(docs)
    volume, _, name = models_mount(broken)
    config = find(broken, "ConfigMap", volume["configMap"]["name"])
    document = yaml.safe_load(config["data"][name])
    change(document)
    config["data"][name] = yaml.safe_dump(document)
    return broken


@dataclass
class Engine:
    """The pods behind one deployment's base_url, as they run."""

    service: dict[str, Any]
    deployment: dict[str, Any]
    server: dict[str, Any]
    env: dict[str, str]
    flags: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.deployment["metadata"]["name"])

    @property
    def kind(self) -> str:
        return "vllm" if self.server.get("command", [])[:2] == ["vllm", "serve"] else "gateway"

    @property
    def port(self) -> int:
        return int(self.flags["port"] if self.kind == "vllm" else self.env["PORT"])

    @property
    def served_name(self) -> str:
        if self.kind == "vllm":
            return self.flags.get("served-model-name") or self.flags["model"]
        return self.env.get("SERVED_MODEL_NAME") or self.env["MODEL_NAME"]

    @property
    def max_model_len(self) -> int:
        if self.kind == "vllm":
            return int(self.flags["max-model-len"])
        return int(self.env["MAX_MODEL_LEN"])

    @property
    def readiness_path(self) -> str:
        return str(self.server["readinessProbe"]["httpGet"]["path"])


def expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion of command and args (unknown names stay as written)."""
    return VAR.sub(lambda m: env.get(m.group(1), m.group(0)), value)


def vllm_flags(args: list[str], env: dict[str, str]) -> dict[str, str]:
    """``vllm serve`` arguments as {flag: value} (the positional model as "model")."""
    flags: dict[str, str] = {}
    for arg in (expand(a, env) for a in args):
        if arg.startswith("--"):
            key, _, value = arg[2:].partition("=")
            flags[key] = value
        else:
            flags["model"] = arg
    return flags


def engine_of(docs: Docs, deployment: dict[str, Any], service: Any = None) -> Engine:
    """The engine a Deployment runs, with its environment (and vLLM's flags) resolved."""
    server = main_container(deployment)
    engine = Engine(service, deployment, server, container_env(docs, deployment, server["name"]))
    if engine.kind == "vllm":
        engine.flags = vllm_flags(server.get("args", []), engine.env)
    return engine


def resolve(docs: Docs, base_url: str) -> tuple[Engine | None, list[str]]:
    """The engine a base_url reaches through cluster DNS and the overlay's Services, or
    why it reaches none."""
    url = urlsplit(base_url)
    namespace = gateway(docs)["metadata"]["namespace"]
    host = url.hostname or ""
    parts = host.split(".")
    suffixes = ([], [namespace], [namespace, "svc"], [namespace, "svc", "cluster", "local"])
    if parts[1:] not in suffixes:
        return None, [f"{base_url}: {host} is not a Service of namespace {namespace}"]
    if url.path != "/v1":
        return None, [f"{base_url}: the path must be /v1 (health checks go beside it)"]
    services = [d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == parts[0]]
    if not services:
        return None, [f"{base_url}: no Service {parts[0]} in the overlay"]
    service = services[0]
    port = url.port or (443 if url.scheme == "https" else 80)
    ports = [p for p in service["spec"]["ports"] if p["port"] == port]
    if not ports:
        return None, [f"{base_url}: Service {parts[0]} has no port {port}"]
    selector = service["spec"]["selector"]
    behind = [
        d
        for d in docs
        if d["kind"] == "Deployment"
        and selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
    ]
    if len(behind) != 1:
        return None, [f"{base_url}: Service {parts[0]} selects {len(behind)} Deployments"]
    deployment = behind[0]
    engine, server = engine_of(docs, deployment, service), main_container(deployment)
    target = ports[0].get("targetPort", port)
    named = {p.get("name"): p["containerPort"] for p in server.get("ports", [])}
    numbers = set(named.values())
    container_port = named.get(target) if isinstance(target, str) else target
    if container_port is None or container_port not in numbers:
        return None, [f"{base_url}: targetPort {target} is no port of {engine.name}"]
    if engine.port != container_port:
        return None, [f"{base_url}: {engine.name} listens on {engine.port}, not {container_port}"]
    return engine, []


def deployment_engines(docs: Docs) -> list[tuple[Any, Any, Engine]]:
    """(model spec, deployment spec, engine) for every deployment of MODELS_FILE; fails on
    one that reaches no engine (test_k8s_router.py checks each resolves)."""
    found = []
    for model in catalog_of(docs).models:
        for spec in model.deployments:
            engine, problems = resolve(docs, spec.base_url)
            assert engine is not None, problems
            found.append((model, spec, engine))
    return found
