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
  #checkov:skip=CKV_AZURE_232:Small cluster: Redis, Prometheus and prometheus-adapter run on the system pool next to critical add-ons; the only user pools are the two tainted GPU pools.

  api_server_access_profile {
    authorized_ip_ranges = var.api_server_authorized_ip_ranges
  }

  # Kubernetes authorization by Azure RBAC: who may use kubectl is the role assignments
  # below (cluster_admin_object_ids), not an admin group of the cluster.
  azure_active_directory_role_based_access_control {
    azure_rbac_enabled = true
    tenant_id          = data.azurerm_client_config.current.tenant_id
  }

  # GPU scale-ups try the spot pool first and fall back to the on-demand pool when spot has no
  # capacity: the priorities live in the ConfigMap of infra/k8s/cluster/ (kube-system).
  auto_scaler_profile {
    expander = "priority"
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

    # A known egress address: Key Vault's firewall admits it (the CSI driver on the nodes
    # reads the API keys from there), and so can an allowlist at the model hub.
    load_balancer_profile {
      outbound_ip_address_ids = [azurerm_public_ip.egress.id]
    }
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
# VMs can be evicted with ~30 s notice (eviction_policy Delete); AKS node auto-drain cordons
# and drains the node on the Preempt event, the gateway drains on SIGTERM, and the HPA keeps
# a second replica (docs/operations.md: "Spot evictions"). The NVIDIA driver comes with AKS's
# GPU node image; the NVIDIA device plugin (infra/k8s/cluster/) advertises nvidia.com/gpu.
resource "azurerm_kubernetes_cluster_node_pool" "gpu" {
  name                    = local.gpu_spot_pool_name
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
  node_taints             = local.gpu_spot_taints
  tags                    = local.tags

  lifecycle {
    ignore_changes = [node_count]
  }
}

# On-demand fallback for the spot pool: same VM size, labels and GPU taint (no spot taint).
# The autoscaler's priority expander only grows it when the spot pool cannot grow; the
# gateway prefers spot nodes (preferred node affinity), so the pool also scales back to 0.
resource "azurerm_kubernetes_cluster_node_pool" "gpu_ondemand" {
  name                    = local.gpu_ondemand_pool_name
  kubernetes_cluster_id   = azurerm_kubernetes_cluster.main.id
  vm_size                 = var.gpu_vm_size
  mode                    = "User"
  priority                = "Regular"
  auto_scaling_enabled    = true
  min_count               = 0
  max_count               = var.gpu_ondemand_node_max_count
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

# Stable outbound address of the cluster (see network_profile above).
resource "azurerm_public_ip" "egress" {
  name                = "${var.prefix}-aks-egress"
  location            = azurerm_resource_group.main.location
  resource_group_name = azurerm_resource_group.main.name
  allocation_method   = "Static"
  sku                 = "Standard"
  zones               = var.zones
  tags                = local.tags
}

# The cluster's identity must be allowed to attach the egress IP to its load balancer (the IP
# lives in this resource group, not in the node resource group AKS manages).
resource "azurerm_role_assignment" "aks_egress_ip" {
  scope                = azurerm_public_ip.egress.id
  role_definition_name = "Network Contributor"
  principal_id         = azurerm_kubernetes_cluster.main.identity[0].principal_id
}

# kubectl for the operators (local accounts are off, Azure RBAC decides): Cluster User lets
# `az aks get-credentials` fetch a kubeconfig, RBAC Cluster Admin allows everything inside.
resource "azurerm_role_assignment" "aks_cluster_user" {
  for_each             = toset(var.cluster_admin_object_ids)
  scope                = azurerm_kubernetes_cluster.main.id
  role_definition_name = "Azure Kubernetes Service Cluster User Role"
  principal_id         = each.value
}

resource "azurerm_role_assignment" "aks_rbac_cluster_admin" {
  for_each             = toset(var.cluster_admin_object_ids)
  scope                = azurerm_kubernetes_cluster.main.id
  role_definition_name = "Azure Kubernetes Service RBAC Cluster Admin"
  principal_id         = each.value
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
