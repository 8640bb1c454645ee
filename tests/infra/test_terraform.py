"""Static checks of infra/terraform and a checkov scan of every delivery file.

What cannot run here: `terraform init/validate/plan` of the whole module need the azurerm
provider, which cannot be downloaded on this machine (only PyPI, Debian and npm are
reachable), so the module is checked by `terraform fmt -check` (it parses the HCL), checkov
(policy checks on the parsed module, with example.tfvars), the structural tests below, and a
real `terraform plan/apply` of its provider-free part (variables.tf + locals.tf): that runs
every variable validation and computes the names and GPU capacity the Kubernetes tests compare
against. CI's terraform job runs `terraform init -backend=false && terraform validate` where
the registry is reachable. infra/terraform/README.md says what is left unchecked."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.infra.conftest import EXAMPLE_TFVARS, TERRAFORM, output, run

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
        "gpu_node_max_count", "gpu_ondemand_node_max_count", "gpu_spot_max_price",
        "api_server_authorized_ip_ranges", "cluster_admin_object_ids", "log_retention_days",
        "system_node_min_count", "system_node_max_count",
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
    """Every output has a description; the deploy steps' outputs exist (registry, Key Vault and
    the SecretProviderClass' ids, credentials command, GPU capacity)."""
    outputs = blocks("output")
    for name, body in outputs.items():
        assert "description" in body, f"{name}: no description"
    needed = {
        "acr_login_server", "key_vault_name", "aks_get_credentials", "tenant_id",
        "key_vault_secrets_provider_client_id", "gpu_capacity", "gpu_node_pool_names",
    }  # fmt: skip
    assert needed <= set(outputs)


def plan(terraform: str, stage: Path, *overrides: str) -> tuple[int, str]:
    """`terraform plan` of the staged variables + locals with example.tfvars and ``-var``
    overrides: (exit status, output without line breaks in error messages)."""
    cmd = [terraform, "plan", "-input=false", "-no-color", f"-var-file={EXAMPLE_TFVARS}"]
    done = run([*cmd, *(f"-var={item}" for item in overrides)], cwd=stage)
    return done.returncode, " ".join(output(done).replace("│", " ").split())


def test_example_values_pass_every_validation(terraform: str, terraform_stage: Path):
    """Control: example.tfvars, with the variables' defaults, passes every validation."""
    code, text = plan(terraform, terraform_stage)
    assert code == 0, text


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("cluster_admin_object_ids=[]", "cluster_admin_object_ids is empty"),
        ('cluster_admin_object_ids=["alice"]', "must hold Entra ID object ids"),
        ("kubernetes_version=1.32", "kubernetes_version must be an AKS-supported minor"),
        ("kubernetes_version=1.34", "kubernetes_version must be an AKS-supported minor"),
        ("kubernetes_version=1.36.2", "kubernetes_version must be an AKS-supported minor"),
        ("gpu_vm_size=Standard_NC4as_T4_v3", "gpu_vm_size must be one of the sizes"),
        ("gpu_vm_size=Standard_D4ds_v5", "gpu_vm_size must be one of the sizes"),
        ("gpu_ondemand_node_max_count=0", "gpu_ondemand_node_max_count must be between 1"),
    ],
)
def test_bad_values_fail_plan(terraform: str, terraform_stage: Path, override: str, message: str):
    """terraform plan fails with the validation's message on values that would not roll out:
    no cluster admin (nobody could use kubectl), a Kubernetes minor AKS no longer supports, a
    VM size the gpu pod does not fit, no on-demand fallback."""
    code, text = plan(terraform, terraform_stage, override)
    assert code != 0 and message in text, text


def test_default_kubernetes_version_is_supported_by_aks(terraform_values: dict[str, Any]):
    """The default minor is one AKS supports now: 1.35, 1.36 or 1.37 (AKS release calendar,
    December 2026; variables.tf cites it). Raise both when AKS drops 1.35 (March 2027)."""
    assert terraform_values["kubernetes_version"] in {"1.35", "1.36", "1.37"}


def test_gpu_capacity_is_both_pools_times_gpus_per_node(terraform_values: dict[str, Any]):
    """gpu_capacity = (spot max + on-demand max) x GPUs of the chosen VM size; with
    example.tfvars (4 + 2 nodes of Standard_NC24ads_A100_v4, 1 GPU each): 6."""
    example = (TERRAFORM / "example.tfvars").read_text()
    counts = dict(re.findall(r"^(gpu_\w*node_max_count)\s*=\s*(\d+)", example, re.M))
    nodes = int(counts["gpu_node_max_count"]) + int(counts["gpu_ondemand_node_max_count"])
    assert terraform_values["gpu_capacity"] == nodes * terraform_values["gpu_node"]["gpus"] == 6


def test_cluster_has_system_pool_and_gpu_pools_from_zero():
    """One AKS cluster with an autoscaling system pool (priority expander), a GPU spot pool
    and an on-demand GPU fallback pool that both autoscale from 0 with the same labels, Key
    Vault, ACR with AcrPull for the kubelet, Log Analytics."""
    resources = blocks("resource")
    cluster = resources["azurerm_kubernetes_cluster.main"]
    assert "default_node_pool {" in cluster and "auto_scaling_enabled    = true" in cluster
    assert 'expander = "priority"' in cluster
    assert "kubernetes_version                = var.kubernetes_version" in cluster
    common = (
        "auto_scaling_enabled    = true",
        "min_count               = 0",
        "vm_size                 = var.gpu_vm_size",
        "node_labels             = local.gpu_node_labels",
        "zones                   = var.zones",
    )
    spot = resources["azurerm_kubernetes_cluster_node_pool.gpu"]
    for setting in (*common, 'priority                = "Spot"',
                    "max_count               = var.gpu_node_max_count",
                    "node_taints             = local.gpu_spot_taints"):  # fmt: skip
        assert setting in spot, setting
    ondemand = resources["azurerm_kubernetes_cluster_node_pool.gpu_ondemand"]
    for setting in (*common, 'priority                = "Regular"',
                    "max_count               = var.gpu_ondemand_node_max_count",
                    "node_taints             = local.gpu_node_taints"):  # fmt: skip
        assert setting in ondemand, setting
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


def test_gpu_pools_carry_the_device_plugin_label(terraform_values: dict[str, Any]):
    """Both GPU pools are labelled nvidia.com/gpu.present=true, which the NVIDIA device
    plugin's node affinity requires, and llm-gateway/pool=gpu, which the gateway selects."""
    labels = terraform_values["gpu_node_labels"]
    assert labels == {"llm-gateway/pool": "gpu", "nvidia.com/gpu.present": "true"}
    assert terraform_values["gpu_spot_taints"] == [
        *terraform_values["gpu_node_taints"],
        "kubernetes.azure.com/scalesetpriority=spot:NoSchedule",
    ]


def test_operators_get_kubectl_through_azure_rbac():
    """Local accounts are off and Azure RBAC decides, so each cluster_admin_object_ids entry
    gets RBAC Cluster Admin and the Cluster User Role (for get-credentials) on the cluster."""
    resources = blocks("resource")
    cluster = resources["azurerm_kubernetes_cluster.main"]
    assert "local_account_disabled            = true" in cluster
    assert "azure_rbac_enabled = true" in cluster
    roles = {
        "aks_rbac_cluster_admin": "Azure Kubernetes Service RBAC Cluster Admin",
        "aks_cluster_user": "Azure Kubernetes Service Cluster User Role",
    }
    for name, role in roles.items():
        body = resources[f"azurerm_role_assignment.{name}"]
        assert "for_each             = toset(var.cluster_admin_object_ids)" in body
        assert "scope                = azurerm_kubernetes_cluster.main.id" in body
        assert f'role_definition_name = "{role}"' in body


def test_key_vault_admits_the_cluster_egress():
    """The CSI driver reads Key Vault from the nodes: the vault's firewall admits the
    cluster's own outbound IP, which the cluster's load balancer uses for egress."""
    resources = blocks("resource")
    vault = resources["azurerm_key_vault.main"]
    assert 'default_action = "Deny"' in vault
    assert "azurerm_public_ip.egress.ip_address" in vault
    cluster = resources["azurerm_kubernetes_cluster.main"]
    assert "outbound_ip_address_ids = [azurerm_public_ip.egress.id]" in cluster
    assert 'allocation_method   = "Static"' in resources["azurerm_public_ip.egress"]
    attach = resources["azurerm_role_assignment.aks_egress_ip"]
    assert "scope                = azurerm_public_ip.egress.id" in attach
    assert "azurerm_kubernetes_cluster.main.identity[0].principal_id" in attach
    reader = resources["azurerm_role_assignment.kv_secrets_user_aks"]
    assert "key_vault_secrets_provider[0].secret_identity[0].object_id" in reader
