"""The rollout path on AKS, checked on the rendered overlays: the entry point (Ingress), KEDA
as the alternative autoscaler, the pinned and pre-staged model, deadlines that outlast a
cold start, and the Azure names that Terraform creates (azure.env).

The CRDs here (SecretProviderClass, ScaledObject) have no schema in kubernetes-validate, so
they are checked against the subset of their CRD schemas below, which refuses unknown fields
where the CRD does."""

from __future__ import annotations

import copy
import json
import re
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.infra.conftest import (
    K8S,
    ROOT,
    container,
    container_env,
    engines,
    find,
    gateway,
    main_container,
    output,
    run,
)

GATEWAY = "llm-gateway"
GPU_OVERLAYS = ("gpu", "gpu-keda")
# The overlays on AKS: Key Vault keys, Terraform's names, the Ingress.
AKS_OVERLAYS = (*GPU_OVERLAYS, "router")
AZURE_ENV = K8S / "components" / "azure" / "azure.env"
PRESTAGE = K8S / "components" / "model-cache" / "prestage_model.py"
# Placeholders for what only a real subscription knows (example.tfvars uses the same GUID).
EXAMPLE_IDS = {
    "tenant_id": "00000000-0000-0000-0000-000000000000",
    "key_vault_secrets_provider_client_id": "00000000-0000-0000-0000-000000000000",
}
STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
METADATA = {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}}
# secrets-store.csi.x-k8s.io/v1 SecretProviderClass (Secrets Store CSI driver 1.4).
SECRET_PROVIDER_CLASS = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "secrets-store.csi.x-k8s.io/v1"},
        "metadata": METADATA,
        "spec": {
            "type": "object",
            "required": ["provider", "parameters"],
            "additionalProperties": False,
            "properties": {
                "provider": {"enum": ["azure", "aws", "gcp", "vault"]},
                "parameters": STR_MAP,
                "secretObjects": {"type": "array"},
            },
        },
    },
}
# keda.sh/v1alpha1 ScaledObject (KEDA 2.12+), the fields used here.
SCALED_OBJECT = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "metadata": METADATA,
        "spec": {
            "type": "object",
            "required": ["scaleTargetRef", "triggers"],
            "additionalProperties": False,
            "properties": {
                "scaleTargetRef": {
                    "type": "object",
                    "required": ["name"],
                    "additionalProperties": False,
                    "properties": {n: {"type": "string"} for n in ("apiVersion", "kind", "name")},
                },
                "pollingInterval": {"type": "integer", "minimum": 1},
                "cooldownPeriod": {"type": "integer"},
                "minReplicaCount": {"type": "integer", "minimum": 0},
                "maxReplicaCount": {"type": "integer", "minimum": 1},
                "fallback": {
                    "type": "object",
                    "required": ["failureThreshold", "replicas"],
                    "additionalProperties": False,
                    "properties": {
                        "failureThreshold": {"type": "integer", "minimum": 1},
                        "replicas": {"type": "integer", "minimum": 1},
                    },
                },
                "advanced": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "restoreToOriginalReplicaCount": {"type": "boolean"},
                        "horizontalPodAutoscalerConfig": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "name": {"type": "string"},
                                "behavior": {"type": "object"},
                            },
                        },
                    },
                },
                "triggers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["type", "metadata"],
                        "additionalProperties": False,
                        "properties": {
                            "type": {"type": "string"},
                            "name": {"type": "string"},
                            "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                            "metadata": STR_MAP,
                        },
                    },
                },
            },
        },
    },
}


def config_env(docs: list[dict[str, Any]]) -> dict[str, str]:
    return container_env(docs, gateway(docs), "gateway")


def test_crds_match_their_schemas(rendered):
    """The SecretProviderClass and the ScaledObject fit their CRDs' fields; a misspelt field
    fails the same check (control)."""
    for overlay in AKS_OVERLAYS:
        provider = find(rendered[overlay], "SecretProviderClass", f"{GATEWAY}-api-keys")
        jsonschema.validate(provider, SECRET_PROVIDER_CLASS)
    scaled = find(rendered["gpu-keda"], "ScaledObject", GATEWAY)
    jsonschema.validate(scaled, SCALED_OBJECT)
    broken = copy.deepcopy(scaled)
    broken["spec"]["fallback"]["replica"] = broken["spec"]["fallback"].pop("replicas")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, SCALED_OBJECT)


def size_bytes(value: str) -> int:
    """An nginx size: 4m, 512k, 1g (binary units), or bytes."""
    found = re.fullmatch(r"(\d+)([kmg]?)", value.lower())
    assert found, value
    return int(found.group(1)) * {"": 1, "k": 2**10, "m": 2**20, "g": 2**30}[found.group(2)]


def test_ingress_limits_match_the_gateway(rendered):
    """The Ingress admits bodies of exactly MAX_BODY_BYTES, waits longer than REQUEST_TIMEOUT_S
    for the upstream (so the gateway's own timeout answers, not the proxy's), and streams
    responses unbuffered, which server-sent events need (the router's settings in router)."""
    for overlay in AKS_OVERLAYS:
        docs = rendered[overlay]
        env = config_env(docs)
        notes = find(docs, "Ingress", GATEWAY)["metadata"]["annotations"]
        prefix = "nginx.ingress.kubernetes.io/"
        assert size_bytes(notes[f"{prefix}proxy-body-size"]) == int(env["MAX_BODY_BYTES"])
        for timeout in ("proxy-read-timeout", "proxy-send-timeout"):
            assert int(notes[prefix + timeout]) > float(env["REQUEST_TIMEOUT_S"]), timeout
        assert notes[f"{prefix}proxy-buffering"] == "off"


def test_ingress_serves_tls_from_cert_manager_to_the_gateway_service(rendered):
    """TLS for every host, with a certificate Secret that cert-manager's ClusterIssuer fills;
    the backend is the gateway Service's named port (the router's, in router)."""
    for overlay in AKS_OVERLAYS:
        docs = rendered[overlay]
        ingress = find(docs, "Ingress", GATEWAY)
        assert ingress["metadata"]["annotations"]["cert-manager.io/cluster-issuer"]
        assert ingress["spec"]["ingressClassName"]
        hosts = {rule["host"] for rule in ingress["spec"]["rules"]}
        tls_hosts = {host for tls in ingress["spec"]["tls"] for host in tls["hosts"]}
        assert hosts == tls_hosts and all(tls["secretName"] for tls in ingress["spec"]["tls"])
        service = find(docs, "Service", GATEWAY)
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                assert backend["name"] == service["metadata"]["name"]
                assert backend["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}


def test_keda_scales_on_queue_depth_with_a_fallback(rendered):
    """gpu-keda: no HPA of ours (KEDA owns its own), a ScaledObject on the gateway Deployment
    with the gpu HPA's bounds and behaviour, scaling on an AverageValue of gateway_queue_depth
    (a metric the gateway exports; fallback only works for AverageValue), and a fallback
    replica count inside the bounds for when Prometheus cannot be queried."""
    docs = rendered["gpu-keda"]
    assert not [d for d in docs if d["kind"] == "HorizontalPodAutoscaler"]
    spec = find(docs, "ScaledObject", GATEWAY)["spec"]
    hpa = find(rendered["gpu"], "HorizontalPodAutoscaler", GATEWAY)["spec"]
    assert spec["scaleTargetRef"] == hpa["scaleTargetRef"]
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (
        hpa["minReplicas"],
        hpa["maxReplicas"],
    )
    assert spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"] == hpa["behavior"]
    assert spec["minReplicaCount"] <= spec["fallback"]["replicas"] <= spec["maxReplicaCount"]
    [trigger] = spec["triggers"]
    assert trigger["type"] == "prometheus" and trigger["metricType"] == "AverageValue"
    metrics = (ROOT / "app" / "observability" / "metrics.py").read_text()
    metric = re.match(r"sum\((\w+)\{", trigger["metadata"]["query"])
    assert metric and f'"{metric.group(1)}"' in metrics
    assert metric.group(1) == hpa["metrics"][0]["pods"]["metric"]["name"]
    assert trigger["metadata"]["threshold"] == hpa["metrics"][0]["pods"]["target"]["averageValue"]


def test_model_is_pinned_and_prestaged(rendered):
    """Wherever a pod loads a model (the gateway of gpu, each engine of router): the served
    model is MODEL_REPO_ID at a 40-hex MODEL_REVISION, staged by the init container (the
    ConfigMap holds prestage_model.py as committed) where MODEL_NAME points; clients see the
    hub id; the server never reaches the hub (HF_HUB_OFFLINE) and keeps its compile caches on
    the model-cache volume; the HF token is an optional Secret, mounted as a file for the
    init container only."""
    loaders = [(o, gateway(rendered[o])) for o in GPU_OVERLAYS]
    loaders += [("router", engine) for engine in engines(rendered["router"])]
    for overlay, deployment in loaders:
        docs = rendered[overlay]
        server = main_container(deployment)
        env = container_env(docs, deployment, server["name"])
        assert re.fullmatch(r"[0-9a-f]{40}", env["MODEL_REVISION"])
        staged = f"{env['PRESTAGE_ROOT']}/{env['MODEL_REPO_ID']}/{env['MODEL_REVISION']}"
        assert env["MODEL_NAME"] == staged and env["SERVED_MODEL_NAME"] == env["MODEL_REPO_ID"]
        assert env["HF_HUB_OFFLINE"] == "1"
        mounts = {m["name"]: m["mountPath"] for m in server["volumeMounts"]}
        for cache in ("PRESTAGE_ROOT", "VLLM_CACHE_ROOT", "TRITON_CACHE_DIR"):
            assert env[cache].startswith(mounts["model-cache"] + "/"), cache
        init = container(deployment, "prestage-model")
        assert init["envFrom"] == server["envFrom"]
        init_mounts = {m["name"]: m["mountPath"] for m in init["volumeMounts"]}
        token_path = next(e["value"] for e in init["env"] if e["name"] == "HF_TOKEN_PATH")
        assert token_path.startswith(init_mounts["hf-token"] + "/")
        assert "hf-token" not in mounts and "HF_TOKEN" not in env
        assert init_mounts["model-cache"] == mounts["model-cache"]
        volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
        assert volumes["hf-token"]["secret"]["optional"] is True
        script = find(docs, "ConfigMap", volumes["prestage-script"]["configMap"]["name"])
        assert script["data"]["prestage_model.py"] == PRESTAGE.read_text()
        assert init["command"] == ["python", f"{init_mounts['prestage-script']}/prestage_model.py"]


def startup_budget(deployment: dict[str, Any]) -> dict[str, int]:
    note = deployment["metadata"]["annotations"]["llm-gateway/startup-budget-seconds"]
    return {step: int(seconds) for step, seconds in (part.split("=") for part in note.split())}


def test_progress_deadline_outlasts_a_cold_start(rendered):
    """For the gateway and every engine: progressDeadlineSeconds >= the sum of the
    Deployment's startup budget (node, image pull, model pre-staging, engine load), whose
    pre-staging share covers each init container's own PRESTAGE_TIMEOUT_S; a cold GPU start
    gets more than a CPU one (and than the router's, which loads no model)."""
    deadlines = {}
    for overlay, docs in rendered.items():
        for deployment in [gateway(docs), *engines(docs)]:
            name = f"{overlay}/{deployment['metadata']['name']}"
            budget = startup_budget(deployment)
            assert set(budget) == {"node", "pull", "prestage", "engine"}
            deadline = deployment["spec"]["progressDeadlineSeconds"]
            assert deadline >= sum(budget.values()), f"{name}: {deadline} < {budget}"
            for init in deployment["spec"]["template"]["spec"].get("initContainers", []):
                timeout = container_env(docs, deployment, init["name"]).get("PRESTAGE_TIMEOUT_S")
                assert budget["prestage"] >= float(timeout or 0), name
            deadlines[name] = deadline
    assert deadlines["gpu/llm-gateway"] > deadlines["cpu/llm-gateway"]
    assert deadlines["router/llm-engine-vllm"] > deadlines["router/llm-gateway"]


def example_outputs(terraform_values: dict[str, Any]) -> dict[str, Any]:
    """`terraform output -json` as the real module would give for example.tfvars: names from
    Terraform's own evaluation, the ids only Azure knows as placeholders."""
    values = {
        "acr_login_server": terraform_values["acr_login_server"],
        "key_vault_name": terraform_values["key_vault_name"],
        **EXAMPLE_IDS,
    }
    return {name: {"sensitive": False, "type": "string", "value": v} for name, v in values.items()}


def azure_env(*args: str | Path) -> Any:
    return run([sys.executable, K8S / "azure_env.py", *args])


def test_azure_env_holds_the_names_terraform_creates(rendered, terraform_values, tmp_path):
    """azure.env is what azure_env.py writes from Terraform's outputs for example.tfvars, and
    the AKS overlays use it: every image (the router's and the engines' too) comes from the
    registry Terraform names (<prefix>acr<hash>.azurecr.io), the SecretProviderClass reads
    Terraform's Key Vault."""
    outputs = tmp_path / "outputs.json"
    outputs.write_text(json.dumps(example_outputs(terraform_values)))
    done = azure_env("--outputs", outputs, "--check")
    assert done.returncode == 0, output(done)
    registry = terraform_values["acr_login_server"]
    assert registry == f"{terraform_values['acr_name']}.azurecr.io"
    for overlay in AKS_OVERLAYS:
        docs = rendered[overlay]
        for deployment in [gateway(docs), *engines(docs)]:
            image = main_container(deployment)["image"]
            assert image.startswith(f"{registry}/llm-gateway:") or image.startswith(
                f"{registry}/llm-gateway@sha256:"
            ), image
        parameters = find(docs, "SecretProviderClass", f"{GATEWAY}-api-keys")["spec"]["parameters"]
        assert parameters["keyvaultName"] == terraform_values["key_vault_name"]
        assert parameters["tenantId"] == EXAMPLE_IDS["tenant_id"]


def test_azure_env_check_fails_for_another_subscription(terraform_values, tmp_path):
    """Control: outputs of another registry make --check fail; digests pin both images (cuda
    and cpu); a moving tag is refused for either."""
    outputs = example_outputs(terraform_values)
    outputs["acr_login_server"]["value"] = "otheracr123456.azurecr.io"
    path = tmp_path / "outputs.json"
    path.write_text(json.dumps(outputs))
    stale = azure_env("--outputs", path, "--check")
    assert stale.returncode == 1 and "stale" in stale.stderr
    digest, cpu_digest = "sha256:" + "ab" * 32, "sha256:" + "cd" * 32
    target = tmp_path / "azure.env"
    pins = ("--digest", digest, "--cpu-digest", cpu_digest)
    assert azure_env("--outputs", path, *pins, "--output", target).returncode == 0
    written = target.read_text()
    assert f"GATEWAY_IMAGE=otheracr123456.azurecr.io/llm-gateway@{digest}" in written
    assert f"GATEWAY_CPU_IMAGE=otheracr123456.azurecr.io/llm-gateway@{cpu_digest}" in written
    for moving in (("--tag", "latest"), ("--cpu-tag", "latest")):
        assert azure_env("--outputs", path, *moving, "--output", target).returncode == 2


def test_cluster_objects_are_not_namespaced_into_the_app(rendered):
    """The autoscaler's priorities live in kube-system, outside the app's kustomization (its
    namespace: would move them), and no overlay renders them."""
    config = yaml.safe_load(
        (K8S / "cluster" / "cluster-autoscaler-priority-expander.yaml").read_text()
    )
    assert config["metadata"]["namespace"] == "kube-system"
    for docs in rendered.values():
        assert not [d for d in docs if d["metadata"]["name"] == config["metadata"]["name"]]
