"""Static checks of infra/k8s: kustomize renders each overlay, kubernetes-validate --strict
checks every built-in kind against the bundled OpenAPI schemas, and the wiring between the
objects (probes, drain timing, Service/ServiceMonitor/HPA/adapter, Redis, Secret, GPU
placement vs the Terraform node pool) is checked here; test_gpu_capacity.py and
test_k8s_rollout.py check the GPU sizing and the rollout path. No cluster: nothing is applied.

The Prometheus Operator's CRDs (ServiceMonitor, PrometheusRule) have no schema in
kubernetes-validate (it only warns), so they are checked against the subset of the CRD
schemas below, which refuses unknown fields where the CRD does."""

from __future__ import annotations

import copy
import importlib.util
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
    deployments,
    engines,
    find,
    gateway,
    gpu_deployments,
    load_yaml,
    machine_tool,
    main_container,
    output,
    quantity,
    run,
    venv_tool,
)

GATEWAY = "llm-gateway"
BASE_KINDS = {
    "Namespace", "ServiceAccount", "ConfigMap", "Service", "Deployment",
    "PodDisruptionBudget", "HorizontalPodAutoscaler", "NetworkPolicy", "ServiceMonitor",
    "PrometheusRule",
}  # fmt: skip
# What each overlay adds to (+) or takes from (-) the base.
OVERLAY_KINDS = {
    "cpu": BASE_KINDS,
    "gpu": BASE_KINDS | {"Ingress", "PersistentVolumeClaim", "SecretProviderClass"},
    "gpu-keda": (BASE_KINDS - {"HorizontalPodAutoscaler"})
    | {"Ingress", "PersistentVolumeClaim", "SecretProviderClass", "ScaledObject"},
    "router": BASE_KINDS | {"Ingress", "PersistentVolumeClaim", "SecretProviderClass"},
}
# The engine Deployments (each with its Service) an overlay adds to the gateway and Redis.
ENGINES = {"router": {"llm-engine-vllm", "llm-engine-gateway"}}
# The labels that group a model's engine pods (spread, disruption budget).
ENGINE_GROUP = ("app.kubernetes.io/component", "llm-gateway/model")
CRD_KINDS = {"ServiceMonitor", "PrometheusRule", "SecretProviderClass", "ScaledObject"}
RULE_FILES = (ROOT / "alerts" / "gateway-rules.yml", ROOT / "alerts" / "kubernetes-rules.yml")
SECRET_EXAMPLE = K8S / "secrets" / "api-keys.example.yaml"

DURATION = r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"  # noqa: E501
STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
LABEL_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"matchLabels": STR_MAP, "matchExpressions": {"type": "array"}},
}
METADATA = {
    "type": "object",
    "required": ["name"],
    "properties": {"name": {"type": "string", "minLength": 1}, "labels": STR_MAP},
}
# From monitoring.coreos.com/v1 (prometheus-operator v0.7x), the fields these files may use.
SERVICE_MONITOR = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": METADATA,
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "additionalProperties": False,
            "properties": {
                "selector": LABEL_SELECTOR,
                "namespaceSelector": {"type": "object"},
                "jobLabel": {"type": "string"},
                "targetLabels": {"type": "array", "items": {"type": "string"}},
                "podTargetLabels": {"type": "array", "items": {"type": "string"}},
                "sampleLimit": {"type": "integer"},
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "targetPort": {"type": ["string", "integer"]},
                            "path": {"type": "string", "pattern": "^/"},
                            "scheme": {"enum": ["http", "https"]},
                            "interval": {"type": "string", "pattern": DURATION},
                            "scrapeTimeout": {"type": "string", "pattern": DURATION},
                            "honorLabels": {"type": "boolean"},
                            "relabelings": {"type": "array"},
                            "metricRelabelings": {"type": "array"},
                        },
                    },
                },
            },
        },
    },
}
PROMETHEUS_RULE = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PrometheusRule"},
        "metadata": METADATA,
        "spec": {
            "type": "object",
            "required": ["groups"],
            "additionalProperties": False,
            "properties": {
                "groups": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["name", "rules"],
                        "additionalProperties": False,
                        "properties": {
                            "name": {"type": "string", "minLength": 1},
                            "interval": {"type": "string", "pattern": DURATION},
                            "limit": {"type": "integer"},
                            "rules": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "required": ["expr"],
                                    "additionalProperties": False,
                                    "oneOf": [
                                        {"required": ["alert"]},
                                        {"required": ["record"]},
                                    ],
                                    "properties": {
                                        "alert": {"type": "string"},
                                        "record": {"type": "string"},
                                        "expr": {"type": ["string", "integer"]},
                                        "for": {"type": "string", "pattern": DURATION},
                                        "keep_firing_for": {"type": "string"},
                                        "labels": STR_MAP,
                                        "annotations": STR_MAP,
                                    },
                                },
                            },
                        },
                    },
                }
            },
        },
    },
}


def test_each_overlay_renders_the_whole_stack(rendered):
    """kubectl kustomize renders every overlay, each with the gateway Deployment, Service,
    PDBs, ServiceMonitor, PrometheusRule, Redis and the network policies, in one namespace;
    gpu adds the Ingress, the model cache PVC and the Key Vault SecretProviderClass, gpu-keda
    swaps the HPA for a KEDA ScaledObject, router adds engine Deployments and their Services;
    Terraform-only values (azure.env) are not applied."""
    assert set(rendered) == set(OVERLAY_KINDS)
    for overlay, docs in rendered.items():
        kinds = {doc["kind"] for doc in docs}
        assert kinds == OVERLAY_KINDS[overlay], f"{overlay}: {kinds ^ OVERLAY_KINDS[overlay]}"
        assert not [d for d in docs if d["metadata"]["name"] == "azure-values"]
        namespaces = {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"}
        assert namespaces == {GATEWAY}, f"{overlay}: {namespaces}"
        for kind in ("Deployment", "Service"):
            assert {d["metadata"]["name"] for d in docs if d["kind"] == kind} == {
                GATEWAY,
                f"{GATEWAY}-redis",
                *ENGINES.get(overlay, ()),
            }


@pytest.mark.parametrize("version", ["latest", "terraform"])
def test_kubernetes_validate_strict_passes(
    rendered_dir: Path, version: str, request: pytest.FixtureRequest
):
    """kubernetes-validate --strict (unknown fields are errors) passes every built-in object
    of every overlay, the cluster add-ons' objects and the Secret example, against the newest
    bundled schemas and against the version infra/terraform deploys."""
    cluster = sorted((K8S / "cluster").glob("*.yaml"))
    cluster = [path for path in cluster if not path.name.endswith(".values.yaml")]
    files = [*sorted(rendered_dir.rglob("*.yaml")), *cluster, SECRET_EXAMPLE]
    cmd = [venv_tool("kubernetes-validate"), "--strict", "--no-warn"]
    if version == "terraform":
        values = request.getfixturevalue("terraform_values")
        cmd += ["-k", f"{values['kubernetes_version']}.0"]
    done = run([*cmd, *files])
    assert done.returncode == 0, output(done)
    checked = {line.split()[1] for line in done.stdout.splitlines() if line.startswith("INFO")}
    builtin = {f for f in map(str, files) if not any(k in f for k in CRD_KINDS)}
    assert builtin <= checked, f"not validated: {builtin - checked}"


def test_kubernetes_validate_rejects_a_broken_deployment(rendered, tmp_path: Path):
    """Control: --strict fails the gateway Deployment with a misspelt field and a bad probe
    port type, so its passes above mean something."""
    broken = copy.deepcopy(gateway(rendered["gpu"]))
    spec = container(broken, "gateway")
    spec["readinesProbe"] = spec.pop("readinessProbe")
    (tmp_path / "broken.yaml").write_text(yaml.safe_dump(broken))
    done = run([venv_tool("kubernetes-validate"), "--strict", tmp_path / "broken.yaml"])
    assert done.returncode != 0
    assert "readinesProbe" in done.stdout + done.stderr


@pytest.mark.parametrize(
    ("kind", "schema"), [("ServiceMonitor", SERVICE_MONITOR), ("PrometheusRule", PROMETHEUS_RULE)]
)
def test_crds_match_the_operator_schema(rendered, kind: str, schema: dict[str, Any]):
    """Every ServiceMonitor and PrometheusRule fits the Prometheus Operator's CRD fields
    (unknown fields refused, durations well formed) and carries kube-prometheus-stack's
    release label; each overlay has the gateway's."""
    for docs in rendered.values():
        find(docs, kind, GATEWAY)
        for obj in (d for d in docs if d["kind"] == kind):
            jsonschema.validate(obj, schema)
            assert obj["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_crd_schema_rejects_a_bad_servicemonitor(rendered):
    """Control: the ServiceMonitor schema refuses a misspelt endpoint field and a bad interval."""
    monitor = copy.deepcopy(find(rendered["gpu"], "ServiceMonitor", GATEWAY))
    monitor["spec"]["endpoints"][0]["inteval"] = "15s"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(monitor, SERVICE_MONITOR)
    monitor = copy.deepcopy(find(rendered["gpu"], "ServiceMonitor", GATEWAY))
    monitor["spec"]["endpoints"][0]["interval"] = "15 seconds"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(monitor, SERVICE_MONITOR)


def test_servicemonitor_scrapes_the_gateway_service_as_the_alerts_job(rendered):
    """The ServiceMonitor selects the gateway Service by its labels, scrapes its named port at
    /metrics, and the Service's name (Prometheus' job label) is the job that
    GatewayTargetDown names."""
    rules = (ROOT / "alerts" / "gateway-rules.yml").read_text()
    jobs = set(re.findall(r'job="([^"]+)"', rules))
    for docs in rendered.values():
        monitor = find(docs, "ServiceMonitor", GATEWAY)
        service = find(docs, "Service", GATEWAY)
        selector = monitor["spec"]["selector"]["matchLabels"]
        assert selector.items() <= service["metadata"]["labels"].items()
        port_names = {port["name"] for port in service["spec"]["ports"]}
        for endpoint in monitor["spec"]["endpoints"]:
            assert endpoint["port"] in port_names
            assert endpoint["path"] == "/metrics"
        assert jobs == {service["metadata"]["name"]}


def test_service_routes_to_the_gateway_port(rendered):
    """The Service selects the gateway pods and targets the container port named http, which
    is the PORT the gateway listens on."""
    for docs in rendered.values():
        deployment = gateway(docs)
        service = find(docs, "Service", GATEWAY)
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= labels.items()
        ports = {p["name"]: p["containerPort"] for p in container(deployment, "gateway")["ports"]}
        assert service["spec"]["ports"][0]["targetPort"] in ports
        env = container_env(docs, deployment, "gateway")
        assert int(env["PORT"]) == ports["http"]
        assert env["HOST"] == "0.0.0.0"


def test_probes_use_the_gateway_health_endpoints(rendered):
    """startup and liveness probe GET /healthz, readiness GET /readyz, all on the http port;
    startup allows minutes before liveness may restart the pod."""
    for docs in rendered.values():
        spec = container(gateway(docs), "gateway")
        paths = {
            probe: spec[probe]["httpGet"]["path"]
            for probe in ("startupProbe", "livenessProbe", "readinessProbe")
        }
        assert paths == {
            "startupProbe": "/healthz",
            "livenessProbe": "/healthz",
            "readinessProbe": "/readyz",
        }
        for probe in paths:
            assert spec[probe]["httpGet"]["port"] == "http"
        startup = spec["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 120


# Azure gives a spot VM at least 30 s between the Preempt event and its deletion; AKS node
# auto-drain needs a few seconds to see the event and evict the pods (docs/operations.md).
SPOT_NOTICE_S = 30
AUTO_DRAIN_LATENCY_S = 5
MIN_EVICTION_DRAIN_S = 15
ENGINE_STOP_S = 10


def test_termination_grace_covers_prestop_and_drain(rendered):
    """terminationGracePeriodSeconds >= preStop sleep + SHUTDOWN_GRACE_S + 10 s for the engine
    to stop: Kubernetes never SIGKILLs a pod that is still draining (rollouts, scale-down,
    drains)."""
    for overlay, docs in rendered.items():
        deployment = gateway(docs)
        pre_stop = pre_stop_sleep(deployment)
        assert pre_stop >= 5, "endpoints need a few seconds to drop the pod"
        grace = float(container_env(docs, deployment, "gateway")["SHUTDOWN_GRACE_S"])
        budget = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert (
            budget >= pre_stop + grace + ENGINE_STOP_S
        ), f"{overlay}: {budget} < {pre_stop}+{grace}"


def pre_stop_sleep(deployment: dict[str, Any]) -> int:
    command = main_container(deployment)["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep", command
    return int(command[1])


def test_spot_eviction_notice_leaves_time_to_drain(rendered):
    """On a spot eviction the VM goes ~30 s after the notice, whatever the grace period: for
    every pod on the GPU pools (gateways, engines) the auto-drain latency + preStop sleep
    must leave at least 15 s for in-flight requests, and the drain the pod would do given
    longer (SHUTDOWN_GRACE_S, vLLM's --shutdown-timeout) is cut, not the preStop."""
    for overlay in ("gpu", "gpu-keda", "router"):
        for deployment in gpu_deployments(rendered[overlay]):
            left = SPOT_NOTICE_S - AUTO_DRAIN_LATENCY_S - pre_stop_sleep(deployment)
            name = deployment["metadata"]["name"]
            assert left >= MIN_EVICTION_DRAIN_S, f"{overlay}/{name}: only {left} s to drain"


def test_pods_run_restricted(rendered):
    """Every pod runs as non-root without privilege escalation, capabilities or a writable
    root filesystem, in a namespace that enforces the restricted Pod Security Standard."""
    for docs in rendered.values():
        namespace = find(docs, "Namespace", GATEWAY)
        assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
        for deployment in (d for d in docs if d["kind"] == "Deployment"):
            pod = deployment["spec"]["template"]["spec"]
            assert pod["securityContext"]["runAsNonRoot"] is True
            assert pod["securityContext"]["runAsUser"] > 0
            assert pod["automountServiceAccountToken"] is False
            for spec in pod["containers"] + pod.get("initContainers", []):
                context = spec["securityContext"]
                assert context["allowPrivilegeEscalation"] is False
                assert context["readOnlyRootFilesystem"] is True
                assert context["capabilities"]["drop"] == ["ALL"]
                assert "limits" in spec["resources"] and "requests" in spec["resources"]


def test_gpu_overlays_land_on_the_terraform_gpu_pools(rendered, terraform_values):
    """Every pod that requests a GPU (the gateway of gpu, the engines of router): one
    nvidia.com/gpu requested and limited, node selector = labels of both Terraform GPU pools,
    a toleration for every taint of the spot pool (ours and AKS's spot taint, which covers the
    on-demand pool's too), and a preferred (not required) affinity to spot nodes, so the
    on-demand pool serves when spot has no room. The gateway of cpu and the router: no GPU,
    no toleration, no node selector (the router runs on the system pool)."""
    labels = terraform_values["gpu_node_labels"]
    taints = {tuple(re.split("[=:]", taint)) for taint in terraform_values["gpu_spot_taints"]}
    assert ("kubernetes.azure.com/scalesetpriority", "spot", "NoSchedule") in taints
    spot = {"key": "kubernetes.azure.com/scalesetpriority", "operator": "In", "values": ["spot"]}
    on_gpus = {"gpu": [GATEWAY], "gpu-keda": [GATEWAY], "router": sorted(ENGINES["router"])}
    for overlay, names in on_gpus.items():
        assert sorted(d["metadata"]["name"] for d in gpu_deployments(rendered[overlay])) == names
        for name in names:
            deployment = find(rendered[overlay], "Deployment", name)
            pod = deployment["spec"]["template"]["spec"]
            resources = main_container(deployment)["resources"]
            assert resources["limits"]["nvidia.com/gpu"] == resources["requests"][
                "nvidia.com/gpu"] == 1  # fmt: skip
            assert pod["nodeSelector"] and pod["nodeSelector"].items() <= labels.items()
            tolerated = {(t["key"], t.get("value", ""), t["effect"]) for t in pod["tolerations"]}
            assert taints <= tolerated, f"untolerated taints: {taints - tolerated}"
            affinity = pod["affinity"]["nodeAffinity"]
            assert "requiredDuringSchedulingIgnoredDuringExecution" not in affinity
            preferred = affinity["preferredDuringSchedulingIgnoredDuringExecution"]
            assert [p["preference"]["matchExpressions"] for p in preferred] == [[spot]]
    for overlay in ("cpu", "router"):
        deployment = gateway(rendered[overlay])
        pod = deployment["spec"]["template"]["spec"]
        assert "tolerations" not in pod and "nodeSelector" not in pod, overlay
        assert not gpu_claims(deployment), overlay


def gpu_claims(deployment: dict[str, Any]) -> list[str]:
    """Why a pod would take or wait for a GPU node: a GPU in any container's requests or
    limits, a GPU toleration, or a GPU node selector (empty: it stays off the GPU pools)."""
    pod = deployment["spec"]["template"]["spec"]
    claims = [
        f"{spec['name']} {kind} nvidia.com/gpu"
        for spec in pod["containers"] + pod.get("initContainers", [])
        for kind in ("requests", "limits")
        if "nvidia.com/gpu" in spec.get("resources", {}).get(kind, {})
    ]
    claims += [f"tolerates {t['key']}" for t in pod.get("tolerations", []) if "gpu" in t["key"]]
    selected = [f"{key}={value}" for key, value in pod.get("nodeSelector", {}).items()]
    claims += [f"selects {label}" for label in selected if "gpu" in label.lower()]
    return claims


def test_gpu_claims_catch_a_router_asking_for_a_gpu(rendered):
    """Control: the router given a GPU limit, the GPU toleration or the GPU pools' node
    selector is caught, each for its reason."""
    router = gateway(rendered["router"])
    broken = copy.deepcopy(router)
    main_container(broken)["resources"]["limits"]["nvidia.com/gpu"] = 1
    assert gpu_claims(broken) == ["gateway limits nvidia.com/gpu"]
    broken = copy.deepcopy(router)
    broken["spec"]["template"]["spec"]["tolerations"] = [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    broken["spec"]["template"]["spec"]["nodeSelector"] = {"llm-gateway/pool": "gpu"}
    assert gpu_claims(broken) == ["tolerates nvidia.com/gpu", "selects llm-gateway/pool=gpu"]


def test_replicas_spread_over_zones_and_nodes(rendered):
    """Gateway pods spread over zones (soft: AKS cannot pick a new node's zone) and never two
    on one node (hard), both constraints selecting exactly the gateway pods; an engine's
    select every engine pod of its model, whichever Deployment it belongs to, so a model's
    engines share no node. The router counts only nodes it tolerates (nodeTaintsPolicy
    Honor): the tainted GPU nodes would otherwise be empty domains that its hard host spread
    must match, and no second router pod would fit on a system node."""
    for overlay, docs in rendered.items():
        for deployment in [gateway(docs), *engines(docs)]:
            pod = deployment["spec"]["template"]
            labels = pod["metadata"]["labels"]
            spread = {c["topologyKey"]: c for c in pod["spec"]["topologySpreadConstraints"]}
            assert spread["topology.kubernetes.io/zone"]["whenUnsatisfiable"] == "ScheduleAnyway"
            assert spread["kubernetes.io/hostname"]["whenUnsatisfiable"] == "DoNotSchedule"
            for constraint in spread.values():
                assert constraint["maxSkew"] == 1
                selector = constraint["labelSelector"]["matchLabels"]
                assert selector.items() <= labels.items()
                if deployment in engines(docs):
                    assert selector == {key: labels[key] for key in ENGINE_GROUP}, overlay
                else:
                    assert selector == deployment["spec"]["selector"]["matchLabels"], overlay
    for constraint in gateway(rendered["router"])["spec"]["template"]["spec"][
            "topologySpreadConstraints"]:  # fmt: skip
        assert constraint["nodeTaintsPolicy"] == "Honor"


def test_images_are_pinned_and_pulled_if_not_present(rendered):
    """Every container (init containers and Redis included) names a fixed tag (not latest)
    or a digest and uses imagePullPolicy IfNotPresent: a cached image starts a pod without a
    registry round trip. gpu runs the CUDA build, cpu the locally built CPU build; router
    runs the CPU build for the router (its tokenizer staging too) and the CUDA build for
    every engine."""
    for overlay, docs in rendered.items():
        for deployment in (d for d in docs if d["kind"] == "Deployment"):
            pod = deployment["spec"]["template"]["spec"]
            for spec in pod["containers"] + pod.get("initContainers", []):
                image = spec["image"]
                assert spec["imagePullPolicy"] == "IfNotPresent", f"{overlay}: {spec['name']}"
                name, at, digest = image.partition("@")
                tag = name.rpartition(":")[2] if ":" in name.rpartition("/")[2] else ""
                assert (at and re.fullmatch(r"sha256:[0-9a-f]{64}", digest)) or (
                    tag and tag != "latest"
                ), f"{overlay}: {image} is not pinned"
    assert container(gateway(rendered["cpu"]), "gateway")["image"] == "llm-gateway:0.1.0-cpu"
    for overlay in ("gpu", "gpu-keda"):
        deployment = gateway(rendered[overlay])
        images = {container(deployment, name)["image"] for name in ("gateway", "prestage-model")}
        assert len(images) == 1 and next(iter(images)).endswith("-cuda"), images
    docs = rendered["router"]
    router = gateway(docs)
    images = {container(router, name)["image"] for name in ("gateway", "prestage-tokenizer")}
    assert len(images) == 1 and next(iter(images)).endswith("-cpu"), images
    pods = [d["spec"]["template"]["spec"] for d in engines(docs)]
    images = {c["image"] for pod in pods for c in pod["containers"] + pod["initContainers"]}
    assert len(images) == 1 and next(iter(images)).endswith("-cuda"), images


def adapter_metrics() -> dict[str, str]:
    """prometheus-adapter rules: {metric served to the HPA: Prometheus series it reads}."""
    values = load_yaml(K8S / "prometheus-adapter" / "values.yaml")
    served = {}
    for rule in values["rules"]["custom"]:
        series = re.match(r"([\w:]+)\{", rule["seriesQuery"])
        assert series, rule["seriesQuery"]
        assert "pod" in rule["resources"]["overrides"]
        served[rule["name"]["as"]] = series.group(1)
    return served


def test_hpa_scales_the_gateway_on_queue_depth_via_the_adapter(rendered):
    """gpu: the HPA targets the gateway Deployment on the Pods metric gateway_queue_depth,
    which the prometheus-adapter rule serves from a series the gateway really exports."""
    served = adapter_metrics()
    metrics_source = (ROOT / "app" / "observability" / "metrics.py").read_text()
    hpa = find(rendered["gpu"], "HorizontalPodAutoscaler", GATEWAY)
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": GATEWAY,
    }
    names = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    assert names == ["gateway_queue_depth"]
    for name in names:
        assert name in served, f"no prometheus-adapter rule serves {name}"
        assert f'"{served[name]}"' in metrics_source, f"the gateway exports no {served[name]}"
    assert hpa["spec"]["minReplicas"] >= 2, "one spot eviction must not take the service down"


def vllm_metrics_source() -> str:
    """The source of vLLM's Prometheus metrics, as installed (read, not imported)."""
    spec = importlib.util.find_spec("vllm")
    assert spec and spec.submodule_search_locations, "vllm is not installed"
    return (Path(spec.submodule_search_locations[0]) / "v1" / "metrics" / "loggers.py").read_text()


def test_router_scales_on_cpu_and_engines_on_their_queues(rendered):
    """router: the router's HPA scales on CPU (it queues nothing), from 2 replicas; each
    engine Deployment has its own HPA on a Pods metric that a prometheus-adapter rule serves
    from a series that engine really exports: vLLM's server its waiting requests (vLLM's
    source, as installed), the gateway engine its admission queue (metrics.py)."""
    docs = rendered["router"]
    hpa = find(docs, "HorizontalPodAutoscaler", GATEWAY)["spec"]
    assert [m["resource"]["name"] for m in hpa["metrics"] if m["type"] == "Resource"] == ["cpu"]
    assert len(hpa["metrics"]) == 1 and hpa["minReplicas"] >= 2
    served = adapter_metrics()
    exported = {
        "vllm": vllm_metrics_source(),
        "gateway": (ROOT / "app" / "observability" / "metrics.py").read_text(),
    }
    for deployment in engines(docs):
        name = deployment["metadata"]["name"]
        spec = find(docs, "HorizontalPodAutoscaler", name)["spec"]
        assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                          "name": name}  # fmt: skip
        [metric] = [m["pods"]["metric"]["name"] for m in spec["metrics"]]
        assert metric in served, f"no prometheus-adapter rule serves {metric}"
        source = exported[main_container(deployment)["name"]]
        assert f'"{served[metric]}"' in source, f"{name} exports no {served[metric]}"


def test_cpu_overlay_falls_back_to_cpu_utilisation(rendered):
    """cpu: the HPA uses the documented fallback, CPU utilisation, with no custom metric."""
    hpa = find(rendered["cpu"], "HorizontalPodAutoscaler", GATEWAY)
    assert [m["type"] for m in hpa["spec"]["metrics"]] == ["Resource"]
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    assert hpa["spec"]["maxReplicas"] >= hpa["spec"]["minReplicas"]


def test_pdbs_cover_gateway_and_redis_without_blocking_drains(rendered):
    """A PDB selects the gateway pods, another the Redis pod; every pod (engines too) is
    selected by exactly one (the eviction API refuses a pod two budgets select), which still
    allows one eviction (maxUnavailable, never a minAvailable that a single replica would
    turn into a drain that never ends). No Deployment an HPA scales sets replicas."""
    for docs in rendered.values():
        for name in (GATEWAY, f"{GATEWAY}-redis"):
            pdb = find(docs, "PodDisruptionBudget", name)
            labels = find(docs, "Deployment", name)["spec"]["template"]["metadata"]["labels"]
            assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
        pdbs = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
        for deployment in deployments(docs):
            labels = deployment["spec"]["template"]["metadata"]["labels"]
            covering = [p for p in pdbs if p["spec"]["selector"]["matchLabels"].items() <= (
                labels.items())]  # fmt: skip
            assert len(covering) == 1, f"{deployment['metadata']['name']}: {len(covering)} PDBs"
            assert covering[0]["spec"].get("maxUnavailable", 0) >= 1
            assert "minAvailable" not in covering[0]["spec"]
        for deployment in [gateway(docs), *engines(docs)]:
            assert "replicas" not in deployment["spec"], "the HPA owns replicas"


def test_rate_limits_are_shared_through_the_redis_service(rendered):
    """RATE_LIMIT_STORAGE names the Redis Service and port; that Service selects the Redis
    pods; the network policy lets the gateway pods (and only them) reach Redis."""
    for docs in rendered.values():
        env = container_env(docs, gateway(docs), "gateway")
        storage = re.fullmatch(r"redis://([\w-]+):(\d+)/\d+", env["RATE_LIMIT_STORAGE"])
        assert storage, env["RATE_LIMIT_STORAGE"]
        service = find(docs, "Service", storage.group(1))
        assert int(storage.group(2)) in {p["port"] for p in service["spec"]["ports"]}
        redis = find(docs, "Deployment", storage.group(1))
        assert service["spec"]["selector"].items() <= (
            redis["spec"]["template"]["metadata"]["labels"].items()
        )
        policy = find(docs, "NetworkPolicy", storage.group(1))
        allowed = policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]
        gateway_labels = gateway(docs)["spec"]["template"]["metadata"]["labels"]
        assert allowed.items() <= gateway_labels.items()


def api_keys_mount(deployment: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(volume, mount) of the directory API_KEYS_FILE lies in."""
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["name"]: m for m in container(deployment, "gateway")["volumeMounts"]}
    return volumes["api-keys"], mounts["api-keys"]


def test_api_keys_come_from_a_file_that_can_rotate(rendered):
    """ENABLE_AUTH is on; API_KEYS_FILE is the Secret example's key inside the read-only
    api-keys directory, mounted whole (never subPath, whose file never updates, so the
    gateway's reload on change sees rotations); cpu reads the Secret of the example (not
    rendered, so an apply never replaces real keys), gpu the Key Vault secret through the
    SecretProviderClass, under the same file name."""
    example = load_yaml(SECRET_EXAMPLE)
    key = next(iter(example["stringData"]))
    assert list(example["stringData"]) == ["api-keys.yaml"]
    assert yaml.safe_load(example["stringData"][key]) == {"keys": []}
    for overlay, docs in rendered.items():
        deployment = gateway(docs)
        env = container_env(docs, deployment, "gateway")
        assert env["ENABLE_AUTH"] == "true" and "API_KEYS" not in env
        volume, mount = api_keys_mount(deployment)
        assert mount["readOnly"] is True and "subPath" not in mount
        assert env["API_KEYS_FILE"] == f"{mount['mountPath']}/{key}"
        assert not [d for d in docs if d["kind"] == "Secret"]
        if overlay == "cpu":
            assert volume["secret"]["secretName"] == example["metadata"]["name"]
            continue
        assert "secret" not in volume and volume["csi"]["driver"] == "secrets-store.csi.k8s.io"
        provider = find(docs, "SecretProviderClass", volume["csi"]["volumeAttributes"][
            "secretProviderClass"])  # fmt: skip
        objects = yaml.safe_load(provider["spec"]["parameters"]["objects"])["array"]
        aliases = [yaml.safe_load(item)["objectAlias"] for item in objects]
        assert aliases == [key]


def test_writable_paths_are_volumes(rendered):
    """With a read-only root filesystem, HF_HOME (/models), $HOME (/home/gateway, caches),
    /tmp and /dev/shm are volumes: emptyDir on cpu; wherever a pod loads a model (the gateway
    of gpu, the engines of router) the model cache is the shared ReadWriteMany PVC
    (pre-staged models, compile caches) that outlives pods; the router keeps only its
    tokenizer, in a small emptyDir."""
    for overlay, docs in rendered.items():
        loaders = engines(docs) if overlay == "router" else [gateway(docs)]
        for deployment in [gateway(docs), *engines(docs)]:
            spec = main_container(deployment)
            mounts = {m["mountPath"]: m["name"] for m in spec["volumeMounts"]}
            volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
            for path in ("/home/gateway", "/tmp", "/dev/shm"):
                assert "emptyDir" in volumes[mounts[path]], f"{overlay}: {path}"
            cache = volumes[mounts["/models"]]
            if overlay == "cpu":
                assert "emptyDir" in cache
                continue
            if deployment not in loaders:  # the router: its tokenizer only
                assert quantity(cache["emptyDir"]["sizeLimit"]) <= 2**30, cache
                continue
            assert list(cache) == ["name", "persistentVolumeClaim"], cache
            claim = find(docs, "PersistentVolumeClaim", cache["persistentVolumeClaim"][
                "claimName"])  # fmt: skip
            assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
            assert quantity(claim["spec"]["resources"]["requests"]["storage"]) >= 100 * 2**30


def rule_groups() -> list[dict[str, Any]]:
    return [group for path in RULE_FILES for group in load_yaml(path)["groups"]]


def test_prometheusrule_equals_the_generated_one():
    """The committed PrometheusRule is exactly what generate_prometheusrule.py renders from
    alerts/gateway-rules.yml and alerts/kubernetes-rules.yml, and its groups are theirs."""
    done = run([sys.executable, K8S / "generate_prometheusrule.py", "--check"])
    assert done.returncode == 0, output(done)
    committed = load_yaml(K8S / "base" / "prometheusrule.yaml")
    assert committed["spec"]["groups"] == rule_groups()


def test_prometheusrule_check_fails_when_rules_change(tmp_path: Path):
    """Control: --check exits 1 when the rules file changed after the last generation, and a
    regeneration brings the file back in step."""
    rules = load_yaml(ROOT / "alerts" / "gateway-rules.yml")
    rules["groups"][0]["rules"][0]["for"] = "7m"
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(rules))
    output_file = tmp_path / "prometheusrule.yaml"
    output_file.write_text((K8S / "base" / "prometheusrule.yaml").read_text())
    script = K8S / "generate_prometheusrule.py"
    args = ["--rules", tmp_path / "rules.yml", "--output", output_file]
    python = sys.executable
    stale = run([python, script, *args, "--check"])
    assert stale.returncode == 1 and "out of date" in stale.stderr
    assert run([python, script, *args]).returncode == 0
    assert run([python, script, *args, "--check"]).returncode == 0
    assert "for: 7m" in output_file.read_text()


def test_prometheusrule_rules_pass_promtool(rendered, tmp_path: Path):
    """promtool check rules accepts the PrometheusRule's groups as rendered by kustomize."""
    promtool = machine_tool("promtool", "`python dev.py test` installs Debian's prometheus")
    rule = find(rendered["gpu"], "PrometheusRule", GATEWAY)
    (tmp_path / "rules.yml").write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    done = run([promtool, "check", "rules", tmp_path / "rules.yml"])
    assert done.returncode == 0, output(done)
    expected = sum(len(group["rules"]) for group in rule_groups())
    assert f"SUCCESS: {expected} rules found" in done.stdout
