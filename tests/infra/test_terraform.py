"""Static checks of infra/terraform and a checkov scan of every delivery file.

What cannot run here: `terraform init/validate/plan` need the azurerm provider, which cannot
be downloaded on this machine (only PyPI, Debian and npm are reachable), so the module is
checked by `terraform fmt -check` (it parses the HCL), checkov (policy checks on the parsed
module, with example.tfvars), and the structural tests below. infra/terraform/README.md says
what that leaves unchecked."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.infra.conftest import TERRAFORM, machine_tool, output, run

FRAMEWORKS = ("terraform", "kubernetes", "dockerfile", "github_actions")


def blocks(kind: str) -> dict[str, str]:
    """Top-level HCL blocks ``kind "a" ["b"] { ... }`` of the module, keyed "a" or "a.b"
    (brace matching; enough for this module's files)."""
    found: dict[str, str] = {}
    for path in sorted(TERRAFORM.glob("*.tf")):
        text = path.read_text()
        for match in re.finditer(rf'^{kind} "([\w-]+)"(?: "([\w-]+)")? \{{', text, re.MULTILINE):
            depth, end = 0, match.end() - 1
            for end in range(match.end() - 1, len(text)):
                depth += {"{": 1, "}": -1}.get(text[end], 0)
                if depth == 0:
                    break
            key = ".".join(label for label in match.groups() if label)
            found[key] = text[match.end() : end]
    return found


@pytest.fixture(scope="module")
def terraform() -> str:
    return machine_tool("terraform", "install terraform >= 1.6 (the machine image has 1.11.4)")


def test_terraform_fmt_check(terraform: str):
    """terraform fmt -check -recursive: every file parses and is in canonical format."""
    done = run([terraform, "fmt", "-check", "-recursive", "-diff", TERRAFORM])
    assert done.returncode == 0, output(done)


def test_terraform_fmt_check_catches_bad_files(terraform: str, tmp_path: Path):
    """Control: fmt -check fails a misformatted file and a file that does not parse."""
    (tmp_path / "ugly.tf").write_text('variable "x" {\ndefault="a"\n}\n')
    assert run([terraform, "fmt", "-check", tmp_path]).returncode != 0
    (tmp_path / "ugly.tf").write_text('variable "x" {\n  default = \n')
    assert run([terraform, "fmt", "-check", tmp_path]).returncode != 0


def failures(report: dict[str, Any], framework: str, under: Path) -> list[str]:
    prefix = str(under.resolve())
    return [
        f"{c['check_id']} {c['resource']} ({c.get('file_abs_path')}): {c['check_name']}"
        for c in report[framework]["failed_checks"]
        if str(c.get("file_abs_path", "")).startswith(prefix)
    ]


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_checkov_finds_no_failed_check(checkov_report: dict[str, Any], framework: str):
    """checkov (offline, --skip-download) fails no check on the Terraform module, the rendered
    Kubernetes overlays, the Dockerfile and the workflows, and did scan each of them."""
    report = checkov_report[framework]
    assert report["passed_checks"], f"checkov scanned nothing for {framework}"
    control = checkov_report["_stage"] / "control"
    failed = [
        f"{c['check_id']} {c['resource']} ({c.get('file_abs_path')}): {c['check_name']}"
        for c in report["failed_checks"]
        if not str(c.get("file_abs_path", "")).startswith(str(control))
    ]
    assert not failed, "\n".join(failed)


def test_checkov_skips_are_justified(checkov_report: dict[str, Any]):
    """Every check skipped by an inline checkov:skip comment or annotation says why."""
    skipped = [c for f in FRAMEWORKS for c in checkov_report[f]["skipped_checks"]]
    assert skipped, "expected the documented skips (e.g. CKV_AZURE_115 private cluster)"
    for check in skipped:
        reason = (check.get("check_result") or {}).get("suppress_comment", "")
        assert len(reason.strip()) >= 20, f"{check['check_id']} skipped without a reason"


def test_checkov_catches_insecure_terraform(checkov_report: dict[str, Any]):
    """Control: the same run fails a registry with the admin user enabled (CKV_AZURE_137),
    so the zero failures above mean something."""
    failed = failures(checkov_report, "terraform", checkov_report["_stage"] / "control")
    assert any(line.startswith("CKV_AZURE_137 ") for line in failed), failed


def test_variables_are_described_typed_and_validated():
    """Every variable has a description and a type; every variable an operator must choose
    well (names, sizes, counts, CIDRs) has a validation block."""
    variables = blocks("variable")
    for name, body in variables.items():
        assert re.search(r"^\s*description\s*=\s*\"\S", body, re.M), f"{name}: no description"
        assert re.search(r"^\s*type\s*=", body, re.M), f"{name}: no type"
    must_validate = {
        "subscription_id", "prefix", "location", "kubernetes_version", "gpu_vm_size",
        "gpu_node_max_count", "gpu_spot_max_price", "api_server_authorized_ip_ranges",
        "log_retention_days", "system_node_min_count", "system_node_max_count",
    }  # fmt: skip
    assert must_validate <= set(variables)
    for name in must_validate:
        assert "validation {" in variables[name], f"{name}: no validation"


def test_example_tfvars_sets_every_required_variable():
    """example.tfvars (also checkov's var file) sets every variable without a default."""
    required = {name for name, body in blocks("variable").items() if "default" not in body}
    example = (TERRAFORM / "example.tfvars").read_text()
    assigned = set(re.findall(r"^(\w+)\s*=", example, re.M))
    assert required and required <= assigned, required - assigned


def test_outputs_are_described():
    """Every output has a description; the deploy steps' outputs exist (registry, Key Vault,
    credentials command)."""
    outputs = blocks("output")
    for name, body in outputs.items():
        assert "description" in body, f"{name}: no description"
    assert {"acr_login_server", "key_vault_name", "aks_get_credentials"} <= set(outputs)


def test_cluster_has_system_pool_and_gpu_spot_pool_from_zero():
    """One AKS cluster with an autoscaling system pool, a GPU spot pool that autoscales from 0
    with labels and taints, Key Vault, ACR with AcrPull for the kubelet, Log Analytics."""
    resources = blocks("resource")
    cluster = resources["azurerm_kubernetes_cluster.main"]
    assert "default_node_pool {" in cluster and "auto_scaling_enabled    = true" in cluster
    gpu = resources["azurerm_kubernetes_cluster_node_pool.gpu"]
    for setting in (
        'priority                = "Spot"',
        "auto_scaling_enabled    = true",
        "min_count               = 0",
        "max_count               = var.gpu_node_max_count",
        "node_taints             = local.gpu_node_taints",
        "node_labels             = local.gpu_node_labels",
    ):
        assert setting in gpu, setting
    text = "".join(path.read_text() for path in TERRAFORM.glob("*.tf"))
    for kind in (
        "azurerm_resource_group",
        "azurerm_kubernetes_cluster",
        "azurerm_kubernetes_cluster_node_pool",
        "azurerm_key_vault",
        "azurerm_container_registry",
        "azurerm_log_analytics_workspace",
    ):
        assert f'resource "{kind}" ' in text, kind
    assert 'role_definition_name             = "AcrPull"' in text
    assert "purge_protection_enabled      = true" in text
