"""overlays/router, the engines' side: they drain within their grace period, vLLM's server
gets arguments that vLLM's own parser accepts, only the router (and Prometheus) reach them,
they run without keys or limits of their own, the router lets through enough for their queues
(which scale them) to fill, each model survives the loss of one engine, and the router fits
the system pool it runs on.

Each check returns its problems (empty: none), and each is shown to find the problem it
looks for on a deliberately broken copy of the rendered overlay."""

from __future__ import annotations

import copy
import json
import re
import sys
from collections.abc import Callable
from typing import Any

import pytest

from app.auth.buckets import Limits
from app.auth.settings import AuthSettings
from app.resilience.settings import ResilienceSettings
from tests.infra.conftest import (
    ROOT,
    TERRAFORM,
    autoscaler_of,
    container,
    deployments,
    engines,
    find,
    gateway,
    output,
    replica_bounds_of,
    run,
)
from tests.infra.router_wiring import (
    Docs,
    catalog_of,
    edit_models,
    engine_of,
    resolve,
    router_env,
    settings_from,
)
from tests.infra.test_gpu_capacity import DAEMONSET_HEADROOM, allocatable, pod_requests, surge
from tests.infra.test_k8s import ENGINE_STOP_S, pre_stop_sleep

# Azure's published sizes for the system pool's VM (variables.tf: system_vm_size); add a row
# when the default changes (the test fails for a size it does not know).
SYSTEM_VM_SIZES = {"Standard_D4ds_v5": {"vcpus": 4, "memory_gib": 16}}
# The router may take this share of the system pool at its maximum: CoreDNS, metrics-server,
# Redis, Prometheus and prometheus-adapter run there too.
ROUTER_SHARE_OF_SYSTEM_POOL = 0.5
# Parses the vLLM engine's arguments with `vllm serve`'s own parser (nothing starts), and a
# misspelt copy, which it must refuse; prints what it read.
PARSE_WITH_VLLM = r"""
import json, sys
import vllm
from vllm.entrypoints.cli.serve import ServeSubcommand
from vllm.utils.argparse_utils import FlexibleArgumentParser

def parser():
    top, command = FlexibleArgumentParser(prog="vllm"), ServeSubcommand()
    command.subparser_init(top.add_subparsers(dest="subparser"))
    return top, command

args, misspelt = json.loads(sys.stdin.read())
top, command = parser()
parsed = top.parse_args(["serve", *args])
command.validate(parsed)
try:
    parser()[0].parse_args(["serve", *misspelt])
    refused = False
except SystemExit:
    refused = True
read = {k: getattr(parsed, k) for k in ("model_tag", "served_model_name", "host", "port",
        "max_model_len", "max_num_seqs", "gpu_memory_utilization", "dtype",
        "scheduling_policy", "shutdown_timeout", "generation_config")}
print("RESULT " + json.dumps({"version": vllm.__version__, "refused": refused, "read": read}))
"""


@pytest.fixture
def router(rendered: dict[str, Docs]) -> Docs:
    return rendered["router"]


def broken(docs: Docs, change: Callable[[Docs], None]) -> Docs:
    copied = copy.deepcopy(docs)
    change(copied)
    return copied


def vllm_container(docs: Docs) -> dict[str, Any]:
    return container(find(docs, "Deployment", "llm-engine-vllm"), "vllm")


def set_arg(docs: Docs, flag: str, value: str) -> None:
    args = vllm_container(docs)["args"]
    index = next(i for i, a in enumerate(args) if a.startswith(f"--{flag}="))
    args[index] = f"--{flag}={value}"


def set_env(docs: Docs, config: str, key: str, value: str) -> None:
    [found] = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith(
        config + "-")]  # fmt: skip
    found["data"][key] = value


# -- drain -----------------------------------------------------------------------------------


def drain_problems(docs: Docs) -> list[str]:
    """Engines that Kubernetes would kill while they still drain, or that do not drain."""
    problems = []
    for deployment in engines(docs):
        engine = engine_of(docs, deployment)
        if engine.kind == "vllm":
            drain = float(engine.flags.get("shutdown-timeout", "0"))
            if drain <= 0:
                problems.append(f"{engine.name}: aborts in-flight requests on SIGTERM")
        else:
            drain = settings_from(ResilienceSettings, engine.env).shutdown_grace_s
        grace = deployment["spec"]["template"]["spec"].get("terminationGracePeriodSeconds", 30)
        needed = pre_stop_sleep(deployment) + drain + ENGINE_STOP_S
        if grace < needed:
            problems.append(f"{engine.name}: terminationGracePeriodSeconds {grace} < {needed:g}")
    return problems


def test_engines_grace_covers_their_drain(router):
    """Every engine drains on SIGTERM (vLLM's --shutdown-timeout: its default, 0, aborts
    every request at once; the gateway's SHUTDOWN_GRACE_S), and its
    terminationGracePeriodSeconds covers preStop + that drain + 10 s for the engine to stop,
    so a rollout or a scale-down never SIGKILLs a pod with requests still finishing."""
    assert len(engines(router)) == 2
    assert drain_problems(router) == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: set_arg(d, "shutdown-timeout", "0"), "llm-engine-vllm: aborts in-flight"),
        (lambda d: vllm_container(d)["args"].pop(
            next(i for i, a in enumerate(vllm_container(d)["args"]) if "shutdown" in a)),
         "llm-engine-vllm: aborts in-flight"),
        (lambda d: set_env(d, "llm-engine-config", "SHUTDOWN_GRACE_S", "50"),
         "terminationGracePeriodSeconds 60 < 65"),
        (lambda d: find(d, "Deployment", "llm-engine-gateway")["spec"]["template"]["spec"].pop(
            "terminationGracePeriodSeconds"), "gateway: terminationGracePeriodSeconds 30 < 45"),
    ],
)  # fmt: skip
def test_drain_check_catches_a_cut_drain(router, change, message):
    """Control: vLLM's shutdown timeout 0 or absent, a drain longer than the grace period
    (both engines read SHUTDOWN_GRACE_S), Kubernetes' default grace of 30 s: each reported."""
    assert message in " ".join(drain_problems(broken(router, change)))


# -- vLLM's own parser -----------------------------------------------------------------------


def parse_with_vllm(args: list[str], misspelt: list[str]) -> dict[str, Any]:
    done = run([sys.executable, "-c", PARSE_WITH_VLLM], timeout=300, stdin=json.dumps(
        [args, misspelt]))  # fmt: skip
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, output(done)[-3000:]
    return dict(json.loads(lines[-1][len("RESULT ") :]))


def test_vllm_engine_arguments_parse_with_vllms_own_parser(router):
    """The vLLM engine runs `vllm serve` (the cuda image installs vllm, whose console script
    that is) with arguments that, once Kubernetes expands $(VAR) from the container's
    environment, the parser of the installed vLLM (the version the Dockerfile installs)
    accepts and reads as meant: the staged model, its served name, the port the Service
    targets, the engine ConfigMap's numbers; the same arguments with a misspelt flag are
    refused (control). No Service links in its environment (VLLM_PORT)."""
    deployment = find(router, "Deployment", "llm-engine-vllm")
    engine = engine_of(router, deployment)
    assert engine.server["command"] == ["vllm", "serve"]
    assert deployment["spec"]["template"]["spec"]["enableServiceLinks"] is False
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert 'pip install --no-cache-dir "vllm==${VLLM_VERSION}"' in dockerfile
    pinned = re.search(r"^ARG VLLM_VERSION=(\S+)$", dockerfile, flags=re.MULTILINE)
    assert pinned
    args = [engine.flags.pop("model")] + [f"--{k}={v}" for k, v in engine.flags.items()]
    assert not [a for a in args if "$(" in a], args
    misspelt = [a.replace("--shutdown-timeout", "--shutdown-timout") for a in args]
    result = parse_with_vllm(args, misspelt)
    assert result["version"].split("+")[0] == pinned.group(1)
    assert result["refused"] is True
    read, env = result["read"], engine.env
    assert read["model_tag"] == env["MODEL_NAME"]
    assert read["served_model_name"] == [env["SERVED_MODEL_NAME"]]
    assert read["port"] == engine.port == 8000
    assert (read["max_model_len"], read["max_num_seqs"]) == (
        int(env["MAX_MODEL_LEN"]), int(env["MAX_NUM_SEQS"]))  # fmt: skip
    assert read["shutdown_timeout"] == int(env["SHUTDOWN_GRACE_S"])
    assert read["scheduling_policy"] == "priority" and read["generation_config"] == "vllm"


# -- who reaches the engines -----------------------------------------------------------------


def peer_problems(docs: Docs, policy: str, peer: dict[str, Any]) -> list[str]:
    """Why one ``from`` peer admits more than the router's pods (or Prometheus')."""
    if "ipBlock" in peer:
        return [f"{policy}: admits an ipBlock"]
    if "namespaceSelector" in peer:
        namespaces = peer["namespaceSelector"].get("matchLabels", {})
        pods = peer.get("podSelector", {}).get("matchLabels", {})
        if namespaces != {"kubernetes.io/metadata.name": "monitoring"} or not pods:
            return [f"{policy}: admits pods of other namespaces beyond Prometheus"]
        return []
    selector = peer.get("podSelector", {}).get("matchLabels", {})
    admitted = {
        d["metadata"]["name"]
        for d in deployments(docs)
        if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
    }
    return [] if admitted == {"llm-gateway"} else [f"{policy}: admits {sorted(admitted)}"]


def exposure(docs: Docs) -> list[str]:
    """Why a pod other than the router's (or Prometheus') could reach an engine."""
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    problems = []
    for deployment in engines(docs):
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        guarding = [
            p
            for p in policies
            if p["spec"]["podSelector"].get("matchLabels", {}).items() <= labels.items()
            and "Ingress" in p["spec"].get("policyTypes", ["Ingress"])
        ]
        if not guarding:
            problems.append(f"no NetworkPolicy guards {deployment['metadata']['name']}")
        for policy in guarding:
            name = policy["metadata"]["name"]
            for rule in policy["spec"].get("ingress", []):
                if not rule.get("from"):
                    problems.append(f"{name}: a rule without from admits every pod")
                for peer in rule.get("from", []):
                    problems += peer_problems(docs, name, peer)
    return problems


def test_only_the_router_reaches_the_engines(router):
    """The engines run without keys: every engine pod is guarded by an ingress
    NetworkPolicy whose rules admit, in the namespace, exactly the router's pods, and
    elsewhere only Prometheus' pods in namespace monitoring (the engines' HPAs need their
    /metrics)."""
    assert exposure(router) == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.remove(find(d, "NetworkPolicy", "llm-engines")),
         "no NetworkPolicy guards llm-engine-gateway"),
        (lambda d: find(d, "NetworkPolicy", "llm-engines")["spec"]["ingress"][0].pop("from"),
         "a rule without from admits every pod"),
        (lambda d: find(d, "NetworkPolicy", "llm-engines")["spec"]["ingress"][0]["from"][0][
            "podSelector"].update(matchLabels={}), "admits ['llm-engine-gateway', "),
        (lambda d: find(d, "NetworkPolicy", "llm-engines")["spec"]["ingress"][1]["from"][0][
            "namespaceSelector"].update(matchLabels={}), "beyond Prometheus"),
        (lambda d: find(d, "NetworkPolicy", "llm-engines")["spec"]["ingress"][0]["from"].append(
            {"ipBlock": {"cidr": "0.0.0.0/0"}}), "admits an ipBlock"),
    ],
)  # fmt: skip
def test_exposure_check_catches_an_open_engine(router, change, message):
    """Control: no policy, a rule open to all, an empty pod selector (every pod of the
    namespace), any namespace, an IP block: each reported."""
    assert message in " ".join(exposure(broken(router, change)))


def test_engine_gateways_leave_keys_and_limits_to_the_router(router):
    """A gateway engine, as its own settings read llm-engine-config: auth off, no keys file,
    no rate limit at all (with auth off every request is one anonymous caller, so a limit
    would throttle every client together), buckets in memory (no Redis); the router keeps
    auth on. Control: a RATE_LIMIT_RPM in the engines' ConfigMap would become that limit."""
    gateways = [e for e in map(lambda d: engine_of(router, d), engines(router))
                if e.kind == "gateway"]  # fmt: skip
    assert gateways
    for engine in gateways:
        auth = settings_from(AuthSettings, engine.env)
        assert not auth.enable_auth and auth.api_keys_file is None
        assert auth.anonymous_limits == Limits(rpm=None, tpm=None, burst=None, concurrency=None)
        assert auth.storage_url == "memory"
        limited = settings_from(AuthSettings, {**engine.env, "RATE_LIMIT_RPM": "60"})
        assert limited.anonymous_limits.rpm == 60
    assert router_env(router)["ENABLE_AUTH"] == "true"


# -- scaling ---------------------------------------------------------------------------------


def slots(docs: Docs, deployment: dict[str, Any]) -> int:
    """Requests an engine pod runs at once (vLLM's --max-num-seqs, a gateway's admission)."""
    engine = engine_of(docs, deployment)
    if engine.kind == "vllm":
        return int(engine.flags["max-num-seqs"])
    return settings_from(ResilienceSettings, engine.env).concurrency_limit


def hidden_queues(docs: Docs) -> list[str]:
    """Why requests would wait in the router, where no engine autoscaler sees them."""
    router = settings_from(ResilienceSettings, router_env(docs))
    low, _ = replica_bounds_of(autoscaler_of(docs, gateway(docs)))
    needed = 0.0
    for deployment in engines(docs):
        scaler = autoscaler_of(docs, deployment)
        _, high = replica_bounds_of(scaler)
        [metric] = scaler["spec"]["metrics"]
        target = float(metric["pods"]["target"]["averageValue"])
        needed += high * (slots(docs, deployment) + target)
    if router.concurrency_limit * low < needed:
        return [f"routers let {router.concurrency_limit * low} through, engines hold {needed:g}"]
    return []


def test_router_admission_leaves_queueing_to_the_engines(router):
    """Requests must wait in the engines' queues, whose depth scales the engines: at its
    minimum replicas the routers together admit (CONCURRENCY_LIMIT x minReplicas) at least
    what every engine at its maximum runs plus its HPA's queue target, so the router never
    holds back a load the engines' metrics should see."""
    assert hidden_queues(router) == []


def test_queue_check_catches_a_router_that_holds_requests_back(router):
    """Control: the base's CONCURRENCY_LIMIT of 20 per router is reported."""
    base = broken(router, lambda d: set_env(d, "llm-gateway-config", "CONCURRENCY_LIMIT", "20"))
    assert hidden_queues(base) == ["routers let 40 through, engines hold 296"]


def fragile_models(docs: Docs) -> list[str]:
    """Models that one engine pod's loss (an eviction, a drain) would leave unserved."""
    pdbs = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    problems = []
    for model in catalog_of(docs).models:
        behind = {}
        for spec in model.deployments:
            engine = resolve(docs, spec.base_url)[0]
            assert engine is not None
            behind[engine.name] = engine.deployment
        low = sum(replica_bounds_of(autoscaler_of(docs, d))[0] for d in behind.values())
        if low < 2:
            problems.append(f"{model.id}: {low} engine pod(s) at the minimum")
        budgets = {
            p["metadata"]["name"]: p["spec"]
            for d in behind.values()
            for p in pdbs
            if p["spec"]["selector"]["matchLabels"].items()
            <= d["spec"]["template"]["metadata"]["labels"].items()
        }
        if len(budgets) != 1:
            problems.append(f"{model.id}: its engines fall under {len(budgets)} budgets, not one")
        elif next(iter(budgets.values())).get("maxUnavailable", 0) > low - 1:
            problems.append(f"{model.id}: a drain may take every engine at the minimum")
    return problems


def test_each_model_survives_the_loss_of_one_engine(router):
    """Each model's engines (over all its deployments) keep at least 2 pods at their
    autoscalers' minimum, and one disruption budget covers them all with room for one
    eviction at a time: a spot eviction or a drain leaves the model an engine, and the
    router fails over to it."""
    assert fragile_models(router) == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["models"][0]["deployments"].pop(), "1 engine pod(s) at the minimum"),
    ],
)
def test_fragility_check_catches_a_model_on_one_engine(router, change, message):
    """Control: a model left with one deployment (one engine pod at the minimum)."""
    assert message in " ".join(fragile_models(edit_models(router, change)))


def split_budget(docs: Docs) -> None:
    pdb = find(docs, "PodDisruptionBudget", "llm-engines-qwen2.5-1.5b-instruct")
    pdb["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] = "llm-engine-vllm"
    other = copy.deepcopy(pdb)
    other["metadata"]["name"] = "llm-engine-gateway"
    other["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] = "llm-engine-gateway"
    docs.append(other)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (split_budget, "under 2 budgets, not one"),
        (lambda d: find(d, "PodDisruptionBudget", "llm-engines-qwen2.5-1.5b-instruct")[
            "spec"].update(maxUnavailable=2), "a drain may take every engine"),
    ],
)  # fmt: skip
def test_fragility_check_catches_budgets_that_allow_both(router, change, message):
    """Control: one budget per engine Deployment (a drain may take one of each: both), or a
    budget of 2: each reported."""
    assert message in " ".join(fragile_models(broken(router, change)))


def system_pool_max_pods() -> int:
    found = re.search(r"default_node_pool \{.*?max_pods\s*=\s*(\d+)",
                      (TERRAFORM / "aks.tf").read_text(), flags=re.DOTALL)  # fmt: skip
    assert found
    return int(found.group(1))


def system_pool_problems(docs: Docs, values: dict[str, Any]) -> list[str]:
    """Why the router would not fit the system pool Terraform creates."""
    size = SYSTEM_VM_SIZES.get(values["system_vm_size"])
    if size is None:
        return [f"unknown system_vm_size {values['system_vm_size']}: add it to SYSTEM_VM_SIZES"]
    cpu, memory = allocatable(size, system_pool_max_pods())
    free = {"cpu": cpu - DAEMONSET_HEADROOM[0], "memory": memory - DAEMONSET_HEADROOM[1]}
    router = gateway(docs)
    requests = pod_requests(router)
    problems = [f"{r} request > one node's" for r in ("cpu", "memory") if requests[r] > free[r]]
    _, high = replica_bounds_of(autoscaler_of(docs, router))
    pods = high + surge(router, high)
    for resource in ("cpu", "memory"):
        share = ROUTER_SHARE_OF_SYSTEM_POOL * values["system_node_max_count"] * free[resource]
        if pods * requests[resource] > share:
            problems.append(f"{pods} router pods request more {resource} than their share")
    return problems


def test_router_fits_the_system_pool(router, terraform_values):
    """The router runs on the system pool (the GPU pools are tainted): one pod's requests
    fit one node of Terraform's system_vm_size after AKS's reservations and the daemon sets,
    and at its HPA's maximum plus the rolling update's surge the routers request at most half
    of the pool at its maximum size (system_node_max_count), leaving the rest to CoreDNS,
    Redis, Prometheus and the adapter."""
    assert system_pool_problems(router, terraform_values) == []


def test_system_pool_check_catches_too_many_routers(router, terraform_values):
    """Control: a router HPA of 8 replicas (9 with the surge) wants more than its share; an
    unknown VM size is reported rather than assumed to fit."""
    many = broken(router, lambda d: autoscaler_of(d, gateway(d))["spec"].update(maxReplicas=8))
    assert system_pool_problems(many, terraform_values) == [
        "9 router pods request more cpu than their share"
    ]
    other = {**terraform_values, "system_vm_size": "Standard_B2s"}
    assert "unknown system_vm_size" in system_pool_problems(router, other)[0]
