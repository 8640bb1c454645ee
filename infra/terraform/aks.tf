locals {
  # The GPU pool's label and taints. infra/k8s/overlays/gpu/deployment-gpu.yaml selects the
  # label and tolerates every taint; tests/infra checks the two stay in step. AKS adds the
  # scalesetpriority taint to every spot pool itself; it is listed so plans show no drift.
  gpu_node_labels = {
    "llm-gateway/pool" = "gpu"
  }
  gpu_node_taints = [
    "nvidia.com/gpu=present:NoSchedule",
    "kubernetes.azure.com/scalesetpriority=spot:NoSchedule",
  ]
}

resource "azurerm_kubernetes_cluster" "main" {
  name                              = "${var.prefix}-aks"
  location                          = azurerm_resource_group.main.location
  resource_group_name               = azurerm_resource_group.main.name
  dns_prefix                        = var.prefix
  kubernetes_version                = var.kubernetes_version
  sku_tier                          = "Standard"
  automatic_upgrade_channel         = "patch"
  node_os_upgrade_channel           = "NodeImage"
  local_account_disabled            = true
  role_based_access_control_enabled = true
  azure_policy_enabled              = true
  oidc_issuer_enabled               = true
  workload_identity_enabled         = true
  image_cleaner_enabled             = true
  image_cleaner_interval_hours      = 48
  tags                              = local.tags

  #checkov:skip=CKV_AZURE_115:Public API server restricted to api_server_authorized_ip_ranges; a private cluster needs a VNet, VPN or bastion that this module does not create.
  #checkov:skip=CKV_AZURE_117:OS and data disks use platform-managed keys; a customer-managed disk encryption set is an option, not a need, here.
  #checkov:skip=CKV_AZURE_232:Small cluster: Redis, Prometheus and prometheus-adapter run on the system pool next to critical add-ons; the only user pool is the tainted GPU pool.

  api_server_access_profile {
    authorized_ip_ranges = var.api_server_authorized_ip_ranges
  }

  azure_active_directory_role_based_access_control {
    azure_rbac_enabled     = true
    tenant_id              = data.azurerm_client_config.current.tenant_id
    admin_group_object_ids = var.admin_group_object_ids
  }

  default_node_pool {
    name                    = "system"
    vm_size                 = var.system_vm_size
    auto_scaling_enabled    = true
    min_count               = var.system_node_min_count
    max_count               = var.system_node_max_count
    max_pods                = 50
    os_disk_type            = "Ephemeral"
    os_disk_size_gb         = 128
    host_encryption_enabled = true
    zones                   = var.zones
    tags                    = local.tags

    upgrade_settings {
      max_surge = "10%"
    }
  }

  identity {
    type = "SystemAssigned"
  }

  network_profile {
    network_plugin      = "azure"
    network_plugin_mode = "overlay"
    network_data_plane  = "cilium"
    network_policy      = "cilium"
    load_balancer_sku   = "standard"
  }

  oms_agent {
    log_analytics_workspace_id      = azurerm_log_analytics_workspace.main.id
    msi_auth_for_monitoring_enabled = true
  }

  # Secrets Store CSI driver: lets pods mount the API keys file straight from Key Vault.
  key_vault_secrets_provider {
    secret_rotation_enabled  = true
    secret_rotation_interval = "2m"
  }

  lifecycle {
    ignore_changes = [default_node_pool[0].node_count]
  }
}

# GPU spot pool: scales from 0, so it costs nothing while no gateway pod asks for a GPU. Spot
# VMs can be evicted at any time (eviction_policy Delete); the gateway drains on SIGTERM and
# the HPA's minReplicas keeps a second replica. The NVIDIA driver comes with AKS's GPU node
# image; install the NVIDIA device plugin with tolerations for these taints (docs/operations.md).
resource "azurerm_kubernetes_cluster_node_pool" "gpu" {
  name                    = "gpuspot"
  kubernetes_cluster_id   = azurerm_kubernetes_cluster.main.id
  vm_size                 = var.gpu_vm_size
  mode                    = "User"
  priority                = "Spot"
  eviction_policy         = "Delete"
  spot_max_price          = var.gpu_spot_max_price
  auto_scaling_enabled    = true
  min_count               = 0
  max_count               = var.gpu_node_max_count
  node_count              = 0
  max_pods                = 50
  os_disk_type            = "Managed"
  os_disk_size_gb         = var.gpu_os_disk_size_gb
  host_encryption_enabled = true
  zones                   = var.zones
  node_labels             = local.gpu_node_labels
  node_taints             = local.gpu_node_taints
  tags                    = local.tags

  lifecycle {
    ignore_changes = [node_count]
  }
}

resource "azurerm_monitor_diagnostic_setting" "aks" {
  name                       = "${var.prefix}-aks-diagnostics"
  target_resource_id         = azurerm_kubernetes_cluster.main.id
  log_analytics_workspace_id = azurerm_log_analytics_workspace.main.id

  enabled_log {
    category = "kube-audit-admin"
  }

  enabled_log {
    category = "kube-apiserver"
  }

  enabled_log {
    category = "cluster-autoscaler"
  }

  enabled_log {
    category = "guard"
  }
}
