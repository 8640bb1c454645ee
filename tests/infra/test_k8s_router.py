"""overlays/router, the router's side: its MODELS_FILE validates against the gateway's own
schema and is mounted so that an edit reloads in place; every deployment's base_url reaches,
through cluster DNS and a Service of the overlay, engine pods that listen there, serve that
model under that id with room for its context, answer health where the router checks, keep
pooled connections longer than the router, and time out so that the engine answers first;
the router's tokenizer is the engines' pinned one, without the weights.

Each check returns its problems (empty: none), and each is shown to find the problem it
looks for on a deliberately broken copy of the rendered overlay."""

from __future__ import annotations

import copy
import fnmatch
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.config import ServerSettings
from app.resilience.settings import ResilienceSettings
from app.routing.catalog import CatalogError, OpenAIDeploymentSpec, parse_catalog
from tests.infra.conftest import K8S, ROOT, container, container_env, find, gateway, load_yaml
from tests.infra.router_wiring import (
    VLLM_DEFAULT_KEEP_ALIVE_S,
    Docs,
    Engine,
    catalog_of,
    deployment_engines,
    edit_models,
    models_document,
    models_mount,
    resolve,
    router_env,
    settings_from,
)
from tests.support.requirements import missing

ROUTER = K8S / "overlays" / "router"
MODELS_FILE = ROUTER / "models.yaml"
TINY_MODEL = ROOT / ".models" / "tiny-llama"
# Files a tokenizer-only staging must never fetch (huggingface_hub matches the repo path).
WEIGHTS = (
    "model.safetensors", "model-00001-of-00004.safetensors", "model.safetensors.index.json",
    "pytorch_model.bin", "pytorch_model-00001-of-00002.bin", "pytorch_model.bin.index.json",
    "consolidated.00.pth", "original/consolidated.00.pth", "model.gguf", "tf_model.h5",
    "flax_model.msgpack", "onnx/model.onnx",
)  # fmt: skip


@pytest.fixture
def router(rendered: dict[str, Docs]) -> Docs:
    return rendered["router"]


def broken(docs: Docs, change: Callable[[Docs], None]) -> Docs:
    copied = copy.deepcopy(docs)
    change(copied)
    return copied


def deployment(docs: Docs, name: str) -> dict[str, Any]:
    return find(docs, "Deployment", name)


def set_env(docs: Docs, config: str, key: str, value: str) -> None:
    """Change one literal of a rendered ConfigMap (its generated name starts with config)."""
    [found] = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith(
        config + "-")]  # fmt: skip
    found["data"][key] = value


def set_arg(docs: Docs, flag: str, value: str) -> None:
    args = container(deployment(docs, "llm-engine-vllm"), "vllm")["args"]
    index = next(i for i, a in enumerate(args) if a.startswith(f"--{flag}="))
    args[index] = f"--{flag}={value}"


# -- the catalogue ---------------------------------------------------------------------------


def test_models_file_validates_against_the_gateway_schema(router):
    """The MODELS_FILE the router reads (the mounted ConfigMap) is the committed models.yaml,
    parse_catalog (the gateway's own validation) accepts it, and it lists only kind: openai
    deployments: the router runs no engine of its own."""
    assert models_document(router) == load_yaml(MODELS_FILE)
    catalog = catalog_of(router)
    kinds = {type(spec) for model in catalog.models for spec in model.deployments}
    assert kinds == {OpenAIDeploymentSpec}
    assert all(model.tokenizer and model.context_length for model in catalog.models)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["models"][0].pop("tokenizer"), "needs tokenizer"),
        (lambda d: d["models"][0]["deployments"][0].update(base_url="llm-engine-vllm:8000/v1"),
         "base_url"),
        (lambda d: d["models"][0]["deployments"][1].update(name="qwen-vllm"), "appears twice"),
        (lambda d: d["models"][0]["deployments"][0].update(resume="tokens", send="request"),
         "resume: tokens needs send: tokens"),
    ],
)  # fmt: skip
def test_schema_check_refuses_a_broken_models_file(router, change, message):
    """Control: a remote-only model without a tokenizer, a base_url without a scheme, a
    deployment name twice, resumption without token ids: each refused, saying why."""
    with pytest.raises(CatalogError, match=message):
        catalog_of(edit_models(router, change))


def reload_problems(docs: Docs) -> list[str]:
    """Why an edit of MODELS_FILE would not reach running routers in place."""
    volume, mount, name = models_mount(docs)
    problems = []
    if "subPath" in mount:
        problems.append("MODELS_FILE is mounted with subPath: its file never updates")
    if not mount.get("readOnly"):
        problems.append("the models mount is writable")
    generators = load_yaml(ROUTER / "kustomization.yaml")["configMapGenerator"]
    [generator] = [g for g in generators if f"{name}" in g.get("files", [])]
    if volume.get("configMap", {}).get("name") != generator["name"]:
        problems.append("the ConfigMap's name is not the generator's: an edit would roll pods")
    if not generator.get("options", {}).get("disableNameSuffixHash"):
        problems.append("the models ConfigMap gets a name hash: an edit would roll pods")
    return problems


def test_models_file_reloads_in_place(router):
    """MODELS_FILE lies in a read-only mount of the whole ConfigMap (never subPath, whose
    file the kubelet never updates) whose name carries no content hash, so an edit is applied
    to the running routers' file (which they reload) instead of rolling them; a broken copy
    with subPath is caught."""
    assert reload_problems(router) == []
    name = models_mount(router)[2]
    stuck = broken(router, lambda d: models_mount(d)[1].update(subPath=name))
    assert reload_problems(stuck) == ["MODELS_FILE is mounted with subPath: its file never updates"]
    hashed = broken(router, lambda d: models_mount(d)[0]["configMap"].update(name="m-5t9th"))
    assert "an edit would roll pods" in " ".join(reload_problems(hashed))


# -- every base_url reaches engine pods -----------------------------------------------------


def unresolved(docs: Docs) -> list[str]:
    return [
        problem
        for model in catalog_of(docs).models
        for spec in model.deployments
        for problem in resolve(docs, getattr(spec, "base_url", "local"))[1]
    ]


def test_every_base_url_resolves_to_an_engine_service(router):
    """Each base_url names, by cluster DNS in the router's namespace, a Service of the overlay
    with that port, whose targetPort is a port of the one Deployment it selects, whose server
    listens there (vLLM's --port, the gateway's PORT); distinct deployments reach distinct
    engine Deployments."""
    assert unresolved(router) == []
    names = [engine.name for _, _, engine in deployment_engines(router)]
    assert len(names) == len(set(names)) == 2


def move_port(docs: Docs) -> None:
    service = find(docs, "Service", "llm-engine-vllm")
    service["spec"]["ports"][0]["port"] = 8080


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["models"][0]["deployments"][0].update(
            base_url="http://llm-engine-vllm.other.svc.cluster.local:8000/v1"),
         "is not a Service of namespace llm-gateway"),
        (lambda d: d["models"][0]["deployments"][0].update(
            base_url="http://llm-engine-vlm.llm-gateway.svc.cluster.local:8000/v1"),
         "no Service llm-engine-vlm"),
        (lambda d: d["models"][0]["deployments"][1].update(
            base_url="http://llm-engine-gateway.llm-gateway.svc:80/v1"), "has no port 80"),
        (lambda d: d["models"][0]["deployments"][1].update(
            base_url="http://llm-engine-gateway.llm-gateway.svc:8000"), "the path must be /v1"),
    ],
)  # fmt: skip
def test_resolution_catches_a_base_url_that_reaches_nothing(router, change, message):
    """Control: another namespace, a misspelt Service, a port the Service lacks, a base_url
    without /v1: each reported."""
    assert message in " ".join(unresolved(edit_models(router, change)))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (move_port, "has no port 8000"),
        (lambda d: find(d, "Service", "llm-engine-vllm")["spec"]["selector"].update(
            {"app.kubernetes.io/name": "vllm"}), "selects 0 Deployments"),
        (lambda d: find(d, "Service", "llm-engine-gateway")["spec"]["ports"][0].update(
            targetPort="metrics"), "targetPort metrics is no port"),
        (lambda d: set_arg(d, "port", "8001"), "listens on 8001, not 8000"),
        (lambda d: set_env(d, "llm-engine-config", "PORT", "9000"), "listens on 9000"),
    ],
)  # fmt: skip
def test_resolution_catches_services_and_pods_that_do_not_meet(router, change, message):
    """Control: a Service port moved, a Service selecting no pods, a targetPort the pods do
    not name, vLLM or the gateway engine listening on another port: each reported."""
    assert message in " ".join(unresolved(broken(router, change)))


# -- each deployment matches its engine -----------------------------------------------------


def keep_alive_s(engine: Engine) -> float:
    """How long the engine's server keeps an idle connection open."""
    if engine.kind == "vllm":
        return float(engine.env.get("VLLM_HTTP_TIMEOUT_KEEP_ALIVE", VLLM_DEFAULT_KEEP_ALIVE_S))
    return float(settings_from(ServerSettings, engine.env).keep_alive_timeout_s)


def engine_mismatches(docs: Docs) -> list[str]:
    """Where a deployment of MODELS_FILE and the engine behind it disagree."""
    problems = []
    for model, spec, engine in deployment_engines(docs):
        where, upstream = f"{spec.name} -> {engine.name}", spec.model or model.id
        if upstream != engine.served_name:
            problems.append(f"{where}: asks for {upstream}, serves {engine.served_name}")
        if model.context_length > engine.max_model_len:
            problems.append(f"{where}: context_length {model.context_length} > max_model_len")
        if spec.health.path != engine.readiness_path:
            problems.append(f"{where}: health {spec.health.path} is not the readiness probe's")
        if spec.priority and engine.flags.get("scheduling-policy") != "priority":
            problems.append(f"{where}: sends priority to a server without priority scheduling")
        if keep_alive_s(engine) <= spec.keepalive_s:
            problems.append(f"{where}: closes idle connections before the router's pool does")
    return problems


def test_each_deployment_matches_its_engine(router):
    """For every deployment: the model id it asks for is the one the engine serves (vLLM's
    --served-model-name, the gateway's SERVED_MODEL_NAME); the engine's max_model_len holds
    the catalogue's context_length (the router refuses longer prompts, never the engine);
    the router's health path is the engine pods' own readiness probe (the router ejects what
    Kubernetes takes out of the Service); priority goes only to a vLLM with priority
    scheduling; the server keeps idle connections longer than the router's pool
    (``keepalive_s``), or a request sent as it closes one is dropped."""
    assert engine_mismatches(router) == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: set_env(d, "llm-model-qwen2.5-1.5b-instruct", "SERVED_MODEL_NAME", "qwen"),
         "serves qwen"),
        (lambda d: set_env(d, "llm-engine-config", "MAX_MODEL_LEN", "4096"),
         "context_length 8192 > max_model_len"),
        (lambda d: container(deployment(d, "llm-engine-gateway"), "gateway")["readinessProbe"][
            "httpGet"].update(path="/healthz"), "qwen-gateway -> llm-engine-gateway: health"),
        (lambda d: set_arg(d, "scheduling-policy", "fcfs"), "without priority scheduling"),
        (lambda d: container(deployment(d, "llm-engine-vllm"), "vllm")["env"].pop(),
         "closes idle connections"),
        (lambda d: set_env(d, "llm-engine-config", "KEEP_ALIVE_TIMEOUT_S", "30"),
         "qwen-gateway -> llm-engine-gateway: closes idle connections"),
    ],
)  # fmt: skip
def test_mismatch_check_catches_each_disagreement(router, change, message):
    """Control: a served name changed, an engine context shorter than the catalogue's, a
    health path other than the readiness probe's, priority without priority scheduling,
    vLLM's 5 s keep-alive (its default) or a gateway engine's 30 s: each reported."""
    assert message in " ".join(engine_mismatches(broken(router, change)))


def timeout_problems(docs: Docs) -> list[str]:
    """Where the router's timeouts and its engines' disagree."""
    router = settings_from(ResilienceSettings, router_env(docs))
    problems = []
    for _, spec, engine in deployment_engines(docs):
        where = f"{spec.name} -> {engine.name}"
        if spec.timeout_s >= router.request_timeout_s:
            problems.append(f"{where}: timeout_s {spec.timeout_s:g} >= REQUEST_TIMEOUT_S")
        if engine.kind != "gateway":
            continue  # vLLM's server bounds no wait of its own: timeout_s is the bound
        own = settings_from(ResilienceSettings, engine.env)
        for name in ("queue_timeout_s", "engine_stall_s"):
            if spec.timeout_s <= getattr(own, name):
                problems.append(f"{where}: timeout_s {spec.timeout_s:g} <= its {name.upper()}")
        if own.request_timeout_s < router.request_timeout_s:
            problems.append(f"{where}: its REQUEST_TIMEOUT_S < the router's")
    return problems


def test_router_and_engine_timeouts_agree(router):
    """A deployment's timeout_s (the longest silence the router waits through, before the
    first byte too) outlasts what its engine may need between chunks: a gateway engine's
    QUEUE_TIMEOUT_S (it answers 503 after that, which the router retries on the other
    engine) and ENGINE_STALL_S (its supervisor's stall answer) both come first; timeout_s is
    below the router's REQUEST_TIMEOUT_S (or it could never fire), and no engine's
    REQUEST_TIMEOUT_S is below the router's (the router's deadline is the one clients see).
    All as the gateway's own settings read them."""
    assert timeout_problems(router) == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["models"][0]["deployments"][1].update(timeout_s=20),
         "timeout_s 20 <= its QUEUE_TIMEOUT_S"),
        (lambda d: d["models"][0]["deployments"][1].update(timeout_s=45),
         "timeout_s 45 <= its ENGINE_STALL_S"),
        (lambda d: d["models"][0]["deployments"][0].update(timeout_s=300),
         "qwen-vllm -> llm-engine-vllm: timeout_s 300 >= REQUEST_TIMEOUT_S"),
    ],
)  # fmt: skip
def test_timeout_check_catches_a_router_that_gives_up_first(router, change, message):
    """Control: a timeout_s inside the engine's queue wait or its stall limit, or as long as
    the whole request: each reported."""
    assert message in " ".join(timeout_problems(edit_models(router, change)))


def test_timeout_check_catches_an_engine_that_cuts_requests_first(router):
    """Control: an engine gateway's REQUEST_TIMEOUT_S below the router's is reported."""
    short = broken(router, lambda d: set_env(d, "llm-engine-config", "REQUEST_TIMEOUT_S", "120"))
    assert timeout_problems(short) == [
        "qwen-gateway -> llm-engine-gateway: its REQUEST_TIMEOUT_S < the router's"
    ]


# -- the router's tokenizer ------------------------------------------------------------------


def allow_patterns(docs: Docs) -> list[str]:
    env = container_env(docs, gateway(docs), "prestage-tokenizer")
    return [p.strip() for p in env["PRESTAGE_ALLOW_PATTERNS"].split(",") if p.strip()]


def tokenizer_problems(docs: Docs) -> list[str]:
    """Why the router could count a model's tokens otherwise than its engines."""
    router = gateway(docs)
    pod = router["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    init = container(router, "prestage-tokenizer")
    init_env = container_env(docs, router, "prestage-tokenizer")
    problems = []
    for model, _, engine in deployment_engines(docs):
        pinned = {k: engine.env[k] for k in ("MODEL_REPO_ID", "MODEL_REVISION", "MODEL_NAME")}
        staged = {k: init_env.get(k) for k in pinned}
        if staged != pinned:
            problems.append(f"{model.id}: the router stages {staged}, {engine.name} {pinned}")
        if model.tokenizer != init_env.get("MODEL_NAME"):
            problems.append(f"{model.id}: tokenizer {model.tokenizer} is not what is staged")
        for spec in (init, container(router, "gateway")):
            mounts = [m for m in spec["volumeMounts"] if str(model.tokenizer).startswith(
                m["mountPath"] + "/")]  # fmt: skip
            if len(mounts) != 1 or "emptyDir" not in volumes[mounts[0]["name"]]:
                problems.append(f"{model.id}: {spec['name']} has no emptyDir at the tokenizer")
    weights = [w for w in WEIGHTS for p in allow_patterns(docs) if fnmatch.fnmatch(w, p)]
    if weights:
        problems.append(f"PRESTAGE_ALLOW_PATTERNS fetches weights: {weights}")
    return problems


def test_router_tokenizer_is_the_engines_pin_without_weights(router):
    """The router's init container stages the model pin the engines load (same repo,
    revision and path, from the same ConfigMap), and models.yaml's tokenizer is that path, on
    a small emptyDir that the init container and the router both mount (no model cache);
    its allow patterns match no weight file."""
    assert tokenizer_problems(router) == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["models"][0].update(tokenizer="Qwen/Qwen2.5-1.5B-Instruct"),
         "is not what is staged"),
        (lambda d: d["models"][0].update(tokenizer="/tokenizers/qwen"), "no emptyDir"),
    ],
)  # fmt: skip
def test_tokenizer_check_catches_another_tokenizer(router, change, message):
    """Control: a hub id (another revision than the pin, and a download at reload time) or a
    path no volume holds: each reported."""
    assert message in " ".join(tokenizer_problems(edit_models(router, change)))


def test_tokenizer_check_catches_another_revision_and_weights(router):
    """Control: the router staging from a pin of its own, or patterns that fetch weights."""

    def own_pin(docs: Docs) -> None:
        init = container(gateway(docs), "prestage-tokenizer")
        init["env"].append({"name": "MODEL_REVISION", "value": "0" * 40})

    assert "the router stages" in " ".join(tokenizer_problems(broken(router, own_pin)))

    def weights(docs: Docs) -> None:
        init = container(gateway(docs), "prestage-tokenizer")
        [entry] = [e for e in init["env"] if e["name"] == "PRESTAGE_ALLOW_PATTERNS"]
        entry["value"] += ",*.safetensors"

    assert "fetches weights" in " ".join(tokenizer_problems(broken(router, weights)))


def staged_copy(source: Path, target: Path, patterns: list[str]) -> Path:
    """What a staging with ``patterns`` would leave of the snapshot ``source``."""
    target.mkdir()
    for path in source.rglob("*"):
        name = path.relative_to(source).as_posix()
        if path.is_file() and any(fnmatch.fnmatch(name, p) for p in patterns):
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, target / name)
    return target


def test_allow_patterns_keep_what_the_tokenizer_needs(router, tmp_path: Path):
    """The files the router's patterns keep of a real snapshot (the embedded model's) load
    as the same tokenizer as the whole snapshot: the same ids for a prompt and for a chat
    (its template included); without the tokenizer* pattern nothing loads (control)."""
    if not (TINY_MODEL / "tokenizer.json").is_file():
        missing(f"{TINY_MODEL} is missing: `python dev.py setup` builds the embedded model")
    from app.engine.tokenizer import HFTokenizer

    patterns = allow_patterns(router)
    kept = staged_copy(TINY_MODEL, tmp_path / "kept", patterns)
    assert not list(kept.glob("*.safetensors"))
    whole, part = HFTokenizer(str(TINY_MODEL)), HFTokenizer(str(kept))
    chat = [{"role": "user", "content": "Count to three, please."}]
    assert part.encode_prompt("tokens, counted alike") == whole.encode_prompt(
        "tokens, counted alike")  # fmt: skip
    assert part.encode_chat(chat) == whole.encode_chat(chat)
    bare = staged_copy(TINY_MODEL, tmp_path / "bare", [p for p in patterns if p != "tokenizer*"])
    with pytest.raises((OSError, ValueError)):
        HFTokenizer(str(bare))


def test_models_file_parses_as_committed():
    """Control for the helpers above: parse_catalog reads the committed file directly too
    (what `kubectl apply -k` puts in the ConfigMap), and a document without models fails."""
    assert parse_catalog(yaml.safe_load(MODELS_FILE.read_text()), str(MODELS_FILE)).models
    with pytest.raises(CatalogError):
        parse_catalog({"models": []}, "empty")
