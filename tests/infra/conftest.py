"""Fixtures for the static checks of the delivery files: Dockerfile, compose, Kubernetes,
Terraform, CI workflow and pre-commit config. Nothing here starts the engine or a container,
and nothing needs the network once the tools are installed.

Where the tools come from:

* pip tools (hadolint, check-jsonschema, kubernetes-validate, actionlint, shellcheck,
  pre-commit) are pinned in requirements-dev.txt, so ``python dev.py setup`` puts them in
  .venv next to the Python running these tests;
* checkov and zizmor stay out of .venv (checkov's pins clash with it; zizmor is used here
  only): each is installed on first use into its own venv under
  ``~/.cache/llm-gateway-tools/<name>-<version>`` (or ``$LLM_GATEWAY_TOOLS_CACHE``);
* kubectl, terraform and promtool are machine binaries (the image has kubectl and terraform,
  ``dev.py test`` installs promtool). Missing, they fail the test under CI=true and skip it
  elsewhere, saying what to install.

Terraform values (names, GPU capacity, labels, taints) come from Terraform itself:
``terraform_values`` applies a copy of the module's variables and locals, which need no
provider, with example.tfvars, and reads ``terraform output -json``.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.requirements import missing

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "infra" / "k8s"
TERRAFORM = ROOT / "infra" / "terraform"
OVERLAYS = ("cpu", "gpu", "gpu-keda", "router")
CACHED_TOOLS = {"checkov": "3.3.30", "zizmor": "1.32.0"}
EXAMPLE_TFVARS = TERRAFORM / "example.tfvars"
VENV_BIN = Path(sys.executable).parent


def venv_tool(name: str) -> str:
    """An executable that requirements-dev.txt installs next to this Python."""
    candidate = VENV_BIN / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found:
        return found
    pytest.fail(f"{name} is not installed: run `python dev.py setup` (see requirements-dev.txt)")


def machine_tool(name: str, how: str) -> str:
    """A binary of the machine (not pip-installable here): fail under CI, skip elsewhere."""
    found = shutil.which(name)
    if found:
        return found
    missing(f"{name} is not on PATH; {how}")


def tool_env() -> dict[str, str]:
    """The environment for tools: venv first on PATH (actionlint finds shellcheck there)."""
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["TF_IN_AUTOMATION"] = "1"
    # terraform warns on every call when TF_CLI_CONFIG_FILE names a missing file.
    if not Path(env.get("TF_CLI_CONFIG_FILE", "/")).is_file():
        env.pop("TF_CLI_CONFIG_FILE", None)
    return env


def run(
    cmd: Sequence[str | Path], *, cwd: Path = ROOT, timeout: float = 120, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a tool, capturing its output (never raises on a non-zero exit)."""
    return subprocess.run(
        [str(part) for part in cmd],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=tool_env(),
        check=False,
    )


def output(done: subprocess.CompletedProcess[str]) -> str:
    """Both streams of a finished tool, for assertion messages."""
    return f"exit {done.returncode}\n{done.stdout}\n{done.stderr}".strip()


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    """The one rendered object of ``kind`` named ``name``."""
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def gateway(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """The rendered gateway Deployment."""
    return find(docs, "Deployment", "llm-gateway")


def deployments(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == "Deployment"]


def engines(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The engine Deployments (overlays/router): app.kubernetes.io/component=engine."""
    return [
        d
        for d in deployments(docs)
        if d["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "engine"
    ]


def gpu_deployments(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Deployments whose pods request a GPU."""
    return [
        d
        for d in deployments(docs)
        if any(
            "nvidia.com/gpu" in c["resources"].get("requests", {})
            for c in d["spec"]["template"]["spec"]["containers"]
        )
    ]


def main_container(deployment: dict[str, Any]) -> dict[str, Any]:
    """The pod's one container (the gateway, or an engine's server)."""
    [spec] = deployment["spec"]["template"]["spec"]["containers"]
    return dict(spec)


def autoscaler_of(docs: list[dict[str, Any]], deployment: dict[str, Any]) -> dict[str, Any]:
    """The HPA or ScaledObject that scales ``deployment``."""
    name = deployment["metadata"]["name"]
    found = [
        d
        for d in docs
        if d["kind"] in ("HorizontalPodAutoscaler", "ScaledObject")
        and d["spec"]["scaleTargetRef"]["name"] == name
    ]
    assert len(found) == 1, f"expected one autoscaler of {name}, found {len(found)}"
    return found[0]


def replica_bounds_of(scaler: dict[str, Any]) -> tuple[int, int]:
    """(min, max) replicas of an HPA or a ScaledObject."""
    spec = scaler["spec"]
    if scaler["kind"] == "ScaledObject":
        return spec["minReplicaCount"], spec["maxReplicaCount"]
    return spec["minReplicas"], spec["maxReplicas"]


def container(deployment: dict[str, Any], name: str) -> dict[str, Any]:
    """The container (or init container) ``name`` of a Deployment's pod."""
    pod = deployment["spec"]["template"]["spec"]
    found = [c for c in pod["containers"] + pod.get("initContainers", []) if c["name"] == name]
    assert len(found) == 1, f"expected one container {name!r}"
    return found[0]


def quantity(value: str | int | float) -> float:
    """A Kubernetes quantity as a number: "500m" -> 0.5, "24Gi" -> 24 * 2**30, "4" -> 4."""
    text = str(value)
    binary = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    decimal = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
    for suffix, factor in (*binary.items(), *decimal.items()):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text)


def container_env(
    docs: list[dict[str, Any]], deployment: dict[str, Any], name: str
) -> dict[str, str]:
    """A container's environment: its envFrom ConfigMaps, then its env entries."""
    spec = container(deployment, name)
    env: dict[str, str] = {}
    for source in spec.get("envFrom", []):
        ref = source.get("configMapRef")
        if ref:
            env.update(find(docs, "ConfigMap", ref["name"])["data"])
    for var in spec.get("env", []):
        if "value" in var:
            env[var["name"]] = str(var["value"])
    return env


@pytest.fixture(scope="session")
def kubectl() -> str:
    return machine_tool("kubectl", "install kubectl >= 1.27 (it bundles kustomize)")


@pytest.fixture(scope="session")
def rendered(kubectl: str) -> dict[str, list[dict[str, Any]]]:
    """``kubectl kustomize`` of each overlay: {overlay: [objects]}."""
    result: dict[str, list[dict[str, Any]]] = {}
    for overlay in OVERLAYS:
        done = run([kubectl, "kustomize", K8S / "overlays" / overlay])
        assert done.returncode == 0, f"kustomize overlays/{overlay} failed:\n{output(done)}"
        result[overlay] = [doc for doc in yaml.safe_load_all(done.stdout) if doc]
    return result


@pytest.fixture(scope="session")
def rendered_dir(
    rendered: dict[str, list[dict[str, Any]]], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The rendered overlays, one file per object (kubernetes-validate reports one error per
    file), as ``<overlay>/<nn>-<kind>-<name>.yaml``."""
    out = tmp_path_factory.mktemp("rendered")
    for overlay, docs in rendered.items():
        (out / overlay).mkdir()
        for index, doc in enumerate(docs):
            name = f"{index:02d}-{doc['kind']}-{doc['metadata']['name']}.yaml"
            (out / overlay / name).write_text(yaml.safe_dump(doc, sort_keys=False))
    return out


def tools_cache() -> Path:
    """Where lazily installed tools live, shared across runs and checkouts."""
    override = os.environ.get("LLM_GATEWAY_TOOLS_CACHE")
    if override:
        return Path(override)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "llm-gateway-tools"


def cached_tool(name: str) -> str:
    """A pip-installed tool of CACHED_TOOLS in its own venv, installed once per version (a
    lock guards against another session installing it at the same time)."""
    version = CACHED_TOOLS[name]
    home = tools_cache() / f"{name}-{version}"
    marker = home / ".installed"
    home.parent.mkdir(parents=True, exist_ok=True)
    with open(home.parent / f".{name}-{version}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not marker.exists():
            _install_tool(name, version, home)
            marker.write_text(version)
    return str(home / "bin" / name)


def _install_tool(name: str, version: str, home: Path) -> None:
    shutil.rmtree(home, ignore_errors=True)
    started = time.monotonic()
    print(f"\ninstalling {name}=={version} into {home} (first run only)", flush=True)
    steps = [
        [sys.executable, "-m", "venv", str(home)],
        [str(home / "bin" / "python"), "-m", "pip", "install", "--quiet", f"{name}=={version}"],
    ]
    for step in steps:
        done = run(step, timeout=1200)
        if done.returncode != 0:
            shutil.rmtree(home, ignore_errors=True)
            pytest.fail(
                f"could not install {name}=={version} into {home}: `{' '.join(step)}` "
                f"failed (PyPI must be reachable once; then it is cached):\n{output(done)[-3000:]}"
            )
    print(f"{name} installed in {time.monotonic() - started:.0f} s", flush=True)


@pytest.fixture(scope="session")
def checkov() -> str:
    return cached_tool("checkov")


@pytest.fixture(scope="session")
def terraform() -> str:
    return machine_tool("terraform", "install terraform >= 1.9 (the machine image has 1.11.4)")


# The locals (and variables) tests/infra reads from Terraform; see stage_terraform_locals.
TERRAFORM_LOCALS = (
    "acr_name", "key_vault_name", "gpu_vm_sizes", "gpu_node", "gpu_capacity", "gpu_node_labels",
    "gpu_node_taints", "gpu_spot_taints", "gpu_spot_pool_name", "gpu_ondemand_pool_name",
)  # fmt: skip


def stage_terraform_locals(terraform: str, stage: Path) -> Path:
    """A copy of the module's provider-free part (variables.tf, locals.tf, the VM size table)
    with outputs for TERRAFORM_LOCALS, initialised (no provider: nothing is downloaded)."""
    stage.mkdir(parents=True, exist_ok=True)
    for name in ("variables.tf", "locals.tf", "gpu-vm-sizes.json"):
        shutil.copy(TERRAFORM / name, stage / name)
    outputs = [f'output "{name}" {{\n  value = local.{name}\n}}\n' for name in TERRAFORM_LOCALS]
    for variable in ("kubernetes_version", "system_vm_size", "system_node_max_count"):
        outputs.append(f'output "{variable}" {{\n  value = var.{variable}\n}}\n')
    outputs.append('output "acr_login_server" {\n  value = "${local.acr_name}.azurecr.io"\n}\n')
    (stage / "outputs.tf").write_text("\n".join(outputs))
    done = run([terraform, "init", "-backend=false", "-input=false", "-no-color"], cwd=stage)
    assert done.returncode == 0, output(done)
    return stage


@pytest.fixture(scope="session")
def terraform_stage(terraform: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return stage_terraform_locals(terraform, tmp_path_factory.mktemp("terraform") / "module")


@pytest.fixture(scope="session")
def terraform_values(terraform: str, terraform_stage: Path) -> dict[str, Any]:
    """{output: value} of the staged locals, as Terraform computes them from example.tfvars
    (ACR login server = Azure's <name>.azurecr.io)."""
    apply = [terraform, "apply", "-auto-approve", "-input=false", "-no-color",
             f"-var-file={EXAMPLE_TFVARS}"]  # fmt: skip
    done = run(apply, cwd=terraform_stage)
    assert done.returncode == 0, output(done)
    done = run([terraform, "output", "-json"], cwd=terraform_stage)
    assert done.returncode == 0, output(done)
    return {name: entry["value"] for name, entry in json.loads(done.stdout).items()}


INSECURE_TERRAFORM = """
resource "azurerm_container_registry" "insecure" {
  name                = "insecureacr"
  resource_group_name = "rg"
  location            = "westeurope"
  sku                 = "Basic"
  admin_enabled       = true
}
"""


@pytest.fixture(scope="session")
def checkov_report(
    checkov: str, rendered_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """One checkov run (it starts slowly) over a staging copy of everything it knows: the
    Terraform module (with example.tfvars), the rendered overlays, the Dockerfile, the
    workflows, and a known insecure Terraform file as a control (checkov's JSON output breaks
    with several --directory, hence the copy). Returns {check_type: results}; the staged
    paths are under ``_stage``: terraform/, k8s/, Dockerfile, .github/, control/."""
    stage = tmp_path_factory.mktemp("checkov")
    shutil.copytree(TERRAFORM, stage / "terraform", ignore=shutil.ignore_patterns(".terraform"))
    shutil.copytree(rendered_dir, stage / "k8s")
    shutil.copy(ROOT / "Dockerfile", stage / "Dockerfile")
    shutil.copytree(ROOT / ".github", stage / ".github")
    (stage / "control").mkdir()
    (stage / "control" / "main.tf").write_text(INSECURE_TERRAFORM)
    cmd = [
        checkov, "--skip-download", "--output", "json",
        "--framework", "terraform", "kubernetes", "dockerfile", "github_actions",
        "--var-file", stage / "terraform" / "example.tfvars",
        "--directory", stage,
    ]  # fmt: skip
    done = run(cmd, timeout=600)
    try:
        parsed = json.loads(done.stdout)
    except ValueError:
        pytest.fail(f"checkov gave no JSON report:\n{output(done)[-3000:]}")
    reports = parsed if isinstance(parsed, list) else [parsed]
    merged: dict[str, Any] = {"_stage": stage}
    for report in reports:
        results = report.get("results", {})
        merged[report["check_type"]] = {
            key: results.get(key, [])
            for key in ("passed_checks", "failed_checks", "skipped_checks")
        }
    return merged
