"""Static checks of infra/k8s: kustomize renders each overlay, kubernetes-validate --strict
checks every built-in kind against the bundled OpenAPI schemas, and the wiring between the
objects (probes, drain timing, Service/ServiceMonitor/HPA/adapter, Redis, Secret, GPU
placement vs the Terraform node pool) is checked here. No cluster: nothing is applied.

The Prometheus Operator's CRDs (ServiceMonitor, PrometheusRule) have no schema in
kubernetes-validate (it only warns), so they are checked against the subset of the CRD
schemas below, which refuses unknown fields where the CRD does."""

from __future__ import annotations

import copy
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
    find,
    load_yaml,
    machine_tool,
    output,
    run,
    venv_tool,
)

GATEWAY = "llm-gateway"
BUILTIN_KINDS = {
    "Namespace", "ServiceAccount", "ConfigMap", "Service", "Deployment",
    "PodDisruptionBudget", "HorizontalPodAutoscaler", "NetworkPolicy",
}  # fmt: skip
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}
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


def gateway(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return find(docs, "Deployment", GATEWAY)


def test_each_overlay_renders_the_whole_stack(rendered):
    """kubectl kustomize renders both overlays, each with the gateway Deployment, Service, HPA,
    PDB, ServiceMonitor, PrometheusRule, Redis and the network policies, in one namespace."""
    for overlay, docs in rendered.items():
        kinds = {doc["kind"] for doc in docs}
        assert kinds == BUILTIN_KINDS | CRD_KINDS, f"{overlay}: {kinds}"
        namespaces = {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"}
        assert namespaces == {GATEWAY}, f"{overlay}: {namespaces}"
        for kind in ("Deployment", "Service"):
            assert {d["metadata"]["name"] for d in docs if d["kind"] == kind} == {
                GATEWAY,
                f"{GATEWAY}-redis",
            }


@pytest.mark.parametrize("version", ["latest", "terraform"])
def test_kubernetes_validate_strict_passes(
    rendered_dir: Path, version: str, request: pytest.FixtureRequest
):
    """kubernetes-validate --strict (unknown fields are errors) passes every built-in object
    of both overlays and the Secret example, against the newest bundled schemas and against
    the version infra/terraform deploys."""
    files = [*sorted(rendered_dir.rglob("*.yaml")), SECRET_EXAMPLE]
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
    """ServiceMonitor and PrometheusRule fit the Prometheus Operator's CRD fields (unknown
    fields refused, durations well formed) and carry kube-prometheus-stack's release label."""
    for docs in rendered.values():
        obj = find(docs, kind, GATEWAY)
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


def test_termination_grace_covers_prestop_and_drain(rendered):
    """terminationGracePeriodSeconds >= preStop sleep + SHUTDOWN_GRACE_S + 10 s for the engine
    to stop: Kubernetes never SIGKILLs a pod that is still draining."""
    for overlay, docs in rendered.items():
        deployment = gateway(docs)
        spec = container(deployment, "gateway")
        command = spec["lifecycle"]["preStop"]["exec"]["command"]
        assert command[0] == "sleep", command
        pre_stop = int(command[1])
        assert pre_stop >= 5, "endpoints need a few seconds to drop the pod"
        grace = float(container_env(docs, deployment, "gateway")["SHUTDOWN_GRACE_S"])
        budget = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert budget >= pre_stop + grace + 10, f"{overlay}: {budget} < {pre_stop}+{grace}+10"


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
            for spec in pod["containers"]:
                context = spec["securityContext"]
                assert context["allowPrivilegeEscalation"] is False
                assert context["readOnlyRootFilesystem"] is True
                assert context["capabilities"]["drop"] == ["ALL"]
                assert "limits" in spec["resources"] and "requests" in spec["resources"]


def test_gpu_overlay_lands_on_the_terraform_gpu_spot_pool(rendered, terraform_values):
    """gpu: one nvidia.com/gpu requested and limited, node selector = the Terraform pool's
    labels, a toleration for every Terraform taint of that pool (our own and AKS's spot
    taint). cpu: no GPU, no toleration, no node selector."""
    labels = terraform_values["gpu_node_labels"]
    taints = [tuple(re.split("[=:]", taint)) for taint in terraform_values["gpu_spot_taints"]]
    assert ("kubernetes.azure.com/scalesetpriority", "spot", "NoSchedule") in taints
    pod = gateway(rendered["gpu"])["spec"]["template"]["spec"]
    resources = container(gateway(rendered["gpu"]), "gateway")["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == 1
    assert resources["requests"]["nvidia.com/gpu"] == 1
    assert pod["nodeSelector"].items() <= labels.items() and pod["nodeSelector"]
    tolerated = {(t["key"], t.get("value", ""), t["effect"]) for t in pod["tolerations"]}
    assert set(taints) <= tolerated, f"untolerated taints: {set(taints) - tolerated}"
    cpu_pod = gateway(rendered["cpu"])["spec"]["template"]["spec"]
    assert "tolerations" not in cpu_pod and "nodeSelector" not in cpu_pod
    cpu_resources = container(gateway(rendered["cpu"]), "gateway")["resources"]
    assert "nvidia.com/gpu" not in cpu_resources["limits"]


def test_overlays_pick_their_image(rendered):
    """gpu runs the image's CUDA build, cpu the CPU build, each at a fixed (non-latest) tag."""
    for overlay, suffix in (("gpu", "-cuda"), ("cpu", "-cpu")):
        image = container(gateway(rendered[overlay]), "gateway")["image"]
        name, _, tag = image.rpartition(":")
        assert name.endswith("/llm-gateway") and tag.endswith(suffix), image


def adapter_metrics() -> dict[str, str]:
    """prometheus-adapter rules: {metric served to the HPA: Prometheus series it reads}."""
    values = load_yaml(K8S / "prometheus-adapter" / "values.yaml")
    served = {}
    for rule in values["rules"]["custom"]:
        series = re.match(r"(\w+)\{", rule["seriesQuery"])
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


def test_cpu_overlay_falls_back_to_cpu_utilisation(rendered):
    """cpu: the HPA uses the documented fallback, CPU utilisation, with no custom metric."""
    hpa = find(rendered["cpu"], "HorizontalPodAutoscaler", GATEWAY)
    assert [m["type"] for m in hpa["spec"]["metrics"]] == ["Resource"]
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    assert hpa["spec"]["maxReplicas"] >= hpa["spec"]["minReplicas"]


def test_pdb_covers_the_gateway_without_blocking_drains(rendered):
    """The PDB selects the gateway pods and still allows one eviction, even at one replica."""
    for docs in rendered.values():
        pdb = find(docs, "PodDisruptionBudget", GATEWAY)
        labels = gateway(docs)["spec"]["template"]["metadata"]["labels"]
        assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
        assert pdb["spec"].get("maxUnavailable", 0) >= 1
        assert "replicas" not in gateway(docs)["spec"], "the HPA owns replicas"


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


def test_api_keys_come_from_the_secret_file(rendered):
    """ENABLE_AUTH is on; API_KEYS_FILE is the key of the Secret example, mounted read-only
    where the Deployment mounts the Secret; the Secret itself is not rendered, so an apply
    never replaces real keys with the placeholder."""
    example = load_yaml(SECRET_EXAMPLE)
    assert list(example["stringData"]) == ["api-keys.yaml"]
    assert yaml.safe_load(example["stringData"]["api-keys.yaml"]) == {"keys": []}
    for docs in rendered.values():
        deployment = gateway(docs)
        env = container_env(docs, deployment, "gateway")
        assert env["ENABLE_AUTH"] == "true"
        volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
        mounts = {m["name"]: m for m in container(deployment, "gateway")["volumeMounts"]}
        secret_volumes = [name for name, v in volumes.items() if "secret" in v]
        assert len(secret_volumes) == 1
        volume = secret_volumes[0]
        assert volumes[volume]["secret"]["secretName"] == example["metadata"]["name"]
        assert mounts[volume]["readOnly"] is True
        key = next(iter(example["stringData"]))
        assert env["API_KEYS_FILE"] == f"{mounts[volume]['mountPath']}/{key}"
        assert not [d for d in docs if d["kind"] == "Secret"]
        assert "API_KEYS" not in env


def test_writable_paths_are_volumes(rendered):
    """With a read-only root filesystem, HF_HOME (/models), $HOME (/home/gateway, caches),
    /tmp and /dev/shm are emptyDir volumes; the GPU overlay gives the model cache more room."""
    for overlay, docs in rendered.items():
        deployment = gateway(docs)
        mounts = {
            m["mountPath"]: m["name"] for m in container(deployment, "gateway")["volumeMounts"]
        }
        volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
        for path in ("/models", "/home/gateway", "/tmp", "/dev/shm"):
            assert "emptyDir" in volumes[mounts[path]], f"{overlay}: {path}"
    gpu_cache = {
        v["name"]: v for v in gateway(rendered["gpu"])["spec"]["template"]["spec"]["volumes"]
    }
    assert gpu_cache["model-cache"]["emptyDir"]["sizeLimit"] == "100Gi"


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
