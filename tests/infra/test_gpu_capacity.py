"""The GPU side adds up: the gateway pod fits every GPU VM size Terraform accepts, the
autoscaler never asks for more GPUs than the two pools hold (rolling updates included), and
the cluster add-ons reach every GPU node.

Node sizes, labels, taints, pool names and capacity come from Terraform itself
(``terraform_values``: a provider-free apply of variables.tf + locals.tf); AKS's reservations
are those of https://learn.microsoft.com/azure/aks/node-resource-reservations (AKS >= 1.29)."""

from __future__ import annotations

import copy
import math
import re
from typing import Any

import pytest
import yaml

from tests.infra.conftest import (
    K8S,
    TERRAFORM,
    autoscaler_of,
    find,
    gateway,
    gpu_deployments,
    load_yaml,
    quantity,
    replica_bounds_of,
)

GIB = 2**30
GPU_OVERLAYS = ("gpu", "gpu-keda", "router")
MIB = 2**20
# kube-reserved CPU (millicores) by host cores; AKS documents up to 64 cores, then +10m/core.
KUBE_RESERVED_CPU_M = {1: 60, 2: 100, 4: 140, 8: 180, 16: 260, 32: 420, 64: 740}
EVICTION_THRESHOLD = 100 * MIB
# What AKS's daemon sets request on a GPU node, with room to spare: CNI/Cilium, the Azure Disk
# and Files CSI node plugins, the Key Vault provider, Container Insights' agent, the device
# plugin (together ~0.5 CPU and ~1.5 GiB when this was written).
DAEMONSET_HEADROOM = (1.0, 2 * GIB)


def gpu_pool_max_pods() -> int:
    """max_pods of the GPU pools in aks.tf (AKS reserves memory per possible pod)."""
    text = (TERRAFORM / "aks.tf").read_text()
    found = {
        int(value)
        for pool in ("gpu", "gpu_ondemand")
        for value in re.findall(
            rf'node_pool" "{pool}" \{{.*?max_pods\s*=\s*(\d+)', text, flags=re.DOTALL
        )
    }
    assert len(found) == 1, found
    return found.pop()


def allocatable(size: dict[str, Any], max_pods: int) -> tuple[float, float]:
    """(CPUs, bytes) a node of ``size`` offers to pods after AKS's reservations."""
    cores = size["vcpus"]
    table = [cpu for host, cpu in sorted(KUBE_RESERVED_CPU_M.items()) if host >= cores]
    reserved_cpu = table[0] if table else 740 + 10 * (cores - 64)
    memory = size["memory_gib"] * GIB
    kube_reserved = min(20 * MIB * max_pods + 50 * MIB, 0.25 * memory)
    return cores - reserved_cpu / 1000, memory - kube_reserved - EVICTION_THRESHOLD


def pod_requests(deployment: dict[str, Any]) -> dict[str, float]:
    """Effective requests of the pod: per resource, the larger of the sum over containers
    and the largest init container (how the scheduler counts them)."""
    pod = deployment["spec"]["template"]["spec"]
    result: dict[str, float] = {}
    for name in ("cpu", "memory", "nvidia.com/gpu"):
        main = sum(quantity(c["resources"]["requests"].get(name, 0)) for c in pod["containers"])
        init = [quantity(c["resources"]["requests"].get(name, 0))
                for c in pod.get("initContainers", [])]  # fmt: skip
        result[name] = max([main, *init])
    return result


def pod_limits(deployment: dict[str, Any]) -> dict[str, float]:
    """The pod's containers' limits, summed per resource."""
    containers = deployment["spec"]["template"]["spec"]["containers"]
    return {
        name: sum(quantity(c["resources"]["limits"].get(name, 0)) for c in containers)
        for name in ("cpu", "memory")
    }


def misfits(deployment: dict[str, Any], size: dict[str, Any], max_pods: int) -> list[str]:
    """Why the pod would not run on a node of ``size`` (empty: it fits)."""
    cpu, memory = allocatable(size, max_pods)
    free_cpu, free_memory = cpu - DAEMONSET_HEADROOM[0], memory - DAEMONSET_HEADROOM[1]
    requests = pod_requests(deployment)
    limits = pod_limits(deployment)
    problems = []
    if requests["cpu"] > free_cpu:
        problems.append(f"cpu request {requests['cpu']} > {free_cpu:.2f} free")
    if requests["memory"] > free_memory:
        problems.append(
            f"memory request {requests['memory'] / GIB:.1f} GiB > {free_memory / GIB:.1f}"
        )
    if limits["memory"] > free_memory:
        problems.append(
            f"memory limit {limits['memory'] / GIB:.1f} GiB > {free_memory / GIB:.1f} GiB free"
        )
    if limits["cpu"] > size["vcpus"]:
        problems.append(f"cpu limit {limits['cpu']:g} > {size['vcpus']} vCPUs")
    if requests["nvidia.com/gpu"] > size["gpus"]:
        problems.append(f"{requests['nvidia.com/gpu']} GPUs > {size['gpus']}")
    return problems


def test_gpu_pod_fits_every_vm_size_terraform_accepts(rendered, terraform_values):
    """On every size of gpu-vm-sizes.json (the only ones gpu_vm_size may take), every pod
    that requests a GPU (the gateway of the gpu overlays, the engines of router) fits: its
    requests and memory limit fit what AKS leaves allocatable, minus the daemon sets; its
    CPU limit is at most the node's vCPUs; its GPUs are at most the node's."""
    max_pods = gpu_pool_max_pods()
    sizes = terraform_values["gpu_vm_sizes"]
    assert "Standard_NC8as_T4_v3" in sizes and terraform_values["gpu_node"] == sizes[
        "Standard_NC24ads_A100_v4"
    ]  # fmt: skip
    for overlay in GPU_OVERLAYS:
        assert gpu_deployments(rendered[overlay]), overlay
        for deployment in gpu_deployments(rendered[overlay]):
            for name, size in sizes.items():
                problems = misfits(deployment, size, max_pods)
                assert not problems, f"{overlay}/{deployment['metadata']['name']} on {name}"


def test_fit_check_refuses_a_node_too_small(rendered):
    """Control: the 4-vCPU, 28 GiB T4 size (which the variable's old description suggested)
    cannot hold the gateway pod nor either engine of router, and the check says why."""
    small = {"vcpus": 4, "memory_gib": 28, "gpus": 1, "gpu_memory_gib": 16}
    for deployment in [gateway(rendered["gpu"]), *gpu_deployments(rendered["router"])]:
        problems = misfits(deployment, small, gpu_pool_max_pods())
        assert any(p.startswith("cpu request") for p in problems), problems
        assert any(p.startswith("memory limit") for p in problems), problems


def surge(deployment: dict[str, Any], replicas: int) -> int:
    """Extra pods a rolling update adds at ``replicas`` (maxSurge, percentages rounded up)."""
    value = deployment["spec"]["strategy"]["rollingUpdate"]["maxSurge"]
    if isinstance(value, str) and value.endswith("%"):
        return math.ceil(replicas * int(value[:-1]) / 100)
    return int(value)


def gpus_at_the_maximum(docs: list[dict[str, Any]]) -> float:
    """GPUs the overlay's pods hold when every Deployment that requests GPUs is at its
    autoscaler's maximum and rolling out (+ maxSurge) at once."""
    total = 0.0
    for deployment in gpu_deployments(docs):
        _, high = replica_bounds_of(autoscaler_of(docs, deployment))
        total += (high + surge(deployment, high)) * pod_requests(deployment)["nvidia.com/gpu"]
    return total


@pytest.mark.parametrize("overlay", GPU_OVERLAYS)
def test_autoscaler_and_rollout_fit_the_gpu_pools(rendered, terraform_values, overlay):
    """The sum over the overlay's GPU Deployments (the gateway; or each engine, which scale
    apart) of (maxReplicas + maxSurge) x GPUs <= GPUs of both pools at their maximum
    (terraform gpu_capacity): a rolling update at the maximum never waits for a GPU that
    cannot exist. Each rolls with maxUnavailable 0; a gateway on GPUs keeps minReplicas >= 2,
    so one spot eviction leaves a replica serving (the router's engines: a model's engines
    together, test_k8s_router.py)."""
    docs = rendered[overlay]
    needed = gpus_at_the_maximum(docs)
    capacity = terraform_values["gpu_capacity"]
    assert needed <= capacity, f"{overlay}: {needed} GPUs at the maximum > {capacity}"
    for deployment in gpu_deployments(docs):
        low, high = replica_bounds_of(autoscaler_of(docs, deployment))
        assert 1 <= low <= high
        assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    if overlay != "router":
        assert replica_bounds_of(autoscaler_of(docs, gateway(docs)))[0] >= 2


def test_capacity_check_catches_an_hpa_beyond_the_pools(rendered, terraform_values):
    """Control: the gpu overlay's old maxReplicas of 8 would need 9 GPUs of 6; in router,
    one engine HPA raised to 3 makes both engines together need 7."""
    deployment = gateway(rendered["gpu"])
    assert (8 + surge(deployment, 8)) > terraform_values["gpu_capacity"]
    docs = copy.deepcopy(rendered["router"])
    find(docs, "HorizontalPodAutoscaler", "llm-engine-vllm")["spec"]["maxReplicas"] = 3
    assert gpus_at_the_maximum(docs) == 7 > terraform_values["gpu_capacity"]


def test_device_plugin_runs_on_every_gpu_node(terraform_values):
    """The NVIDIA device plugin's values require a label both GPU pools carry and tolerate
    every taint of either pool, so nvidia.com/gpu is advertised on spot and on-demand nodes."""
    values = load_yaml(K8S / "cluster" / "nvidia-device-plugin.values.yaml")
    labels = terraform_values["gpu_node_labels"]
    terms = values["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    satisfied = [
        all(e["operator"] == "In" and labels.get(e["key"]) in e["values"] for e in term[
            "matchExpressions"])
        for term in terms["nodeSelectorTerms"]
    ]  # fmt: skip
    assert any(satisfied), terms
    for taint in terraform_values["gpu_spot_taints"]:
        key, value, effect = re.split("[=:]", taint)
        assert any(
            t["key"] == key
            and t["effect"] == effect
            and (t["operator"] == "Exists" or t.get("value") == value)
            for t in values["tolerations"]
        ), taint


def priority_of(priorities: dict[int, list[str]], scale_set: str) -> int:
    """The highest priority whose regexes match ``scale_set`` (the autoscaler's rule)."""
    return max(
        p for p, regexes in priorities.items() if any(re.search(r, scale_set) for r in regexes)
    )


def test_autoscaler_grows_spot_before_on_demand(terraform_values):
    """The priority expander's ConfigMap ranks the spot pool's scale set above the on-demand
    pool's, which is above the others (AKS names them aks-<pool>-<id>-vmss)."""
    config = load_yaml(K8S / "cluster" / "cluster-autoscaler-priority-expander.yaml")
    assert config["metadata"] == {
        "name": "cluster-autoscaler-priority-expander",
        "namespace": "kube-system",
    }
    priorities = yaml.safe_load(config["data"]["priorities"])

    def rank(pool: str) -> int:
        return priority_of(priorities, f"aks-{pool}-12345678-vmss")

    spot, ondemand = (
        terraform_values["gpu_spot_pool_name"],
        terraform_values["gpu_ondemand_pool_name"],
    )
    assert rank(spot) > rank(ondemand) > rank("system")
    cluster = (TERRAFORM / "aks.tf").read_text()
    assert 'expander = "priority"' in cluster


def test_hpa_metric_is_not_required_by_the_pdb(rendered):
    """The gateway PDB's budget is absolute (1), so the minimum replicas of 2 always leave one
    pod serving during a voluntary disruption."""
    pdb = find(rendered["gpu"], "PodDisruptionBudget", "llm-gateway")
    low, _ = replica_bounds_of(autoscaler_of(rendered["gpu"], gateway(rendered["gpu"])))
    assert low - pdb["spec"]["maxUnavailable"] >= 1
