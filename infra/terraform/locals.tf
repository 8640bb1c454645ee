# Everything derived from the variables alone (no resource, no provider): names, tags, the GPU
# pools' labels, taints and capacity. tests/infra evaluates this file with `terraform apply`
# of a copy holding only variables.tf, locals.tf and gpu-vm-sizes.json (that needs no
# provider), so the values below are what Terraform computes, not a reading of the source.
locals {
  # Deterministic suffix for the globally unique names (ACR, Key Vault).
  suffix         = substr(sha1("${var.subscription_id}/${var.prefix}/${var.location}"), 0, 6)
  acr_name       = "${var.prefix}acr${local.suffix}"
  key_vault_name = "${var.prefix}-kv-${local.suffix}"
  tags           = merge(var.tags, { managed-by = "terraform" })

  # The GPU VM sizes gpu_vm_size may take (vCPUs, memory, GPUs per node).
  gpu_vm_sizes = jsondecode(file("${path.module}/gpu-vm-sizes.json")).sizes
  gpu_node     = local.gpu_vm_sizes[var.gpu_vm_size]

  # Both GPU pools carry the same labels, so the gateway's nodeSelector matches either:
  # llm-gateway/pool selects them; nvidia.com/gpu.present=true is what the NVIDIA device
  # plugin chart's default node affinity requires (without it no GPU is ever advertised).
  gpu_node_labels = {
    "llm-gateway/pool"       = "gpu"
    "nvidia.com/gpu.present" = "true"
  }
  # Our own taint keeps everything but GPU workloads off GPU nodes. AKS adds the
  # scalesetpriority taint to every spot pool itself; it is listed so plans show no drift.
  gpu_node_taints = ["nvidia.com/gpu=present:NoSchedule"]
  gpu_spot_taints = concat(local.gpu_node_taints, ["kubernetes.azure.com/scalesetpriority=spot:NoSchedule"])

  # Node pool names (Linux: lowercase letters and digits, at most 12 characters). The cluster
  # autoscaler's priority expander (infra/k8s/cluster/) matches them in the VMSS names.
  gpu_spot_pool_name     = "gpuspot"
  gpu_ondemand_pool_name = "gpuondemand"

  # GPUs the two pools can hold at their maximum size: the HPA's maxReplicas plus the rolling
  # update's maxSurge must fit in it (tests/infra checks the overlays against this value).
  gpu_capacity = (var.gpu_node_max_count + var.gpu_ondemand_node_max_count) * local.gpu_node.gpus
}
