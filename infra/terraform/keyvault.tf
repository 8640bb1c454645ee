# Key Vault for the API keys file (the YAML of hashed keys that `python dev.py keys new`
# writes). Terraform creates the vault and the access, never the secret: its value would
# land in the state. Operators put it with
#   az keyvault secret set --vault-name <key_vault_name> --name llm-gateway-api-keys --file api-keys.yaml
# The gpu overlay mounts it into the pods with the Secrets Store CSI driver
# (infra/k8s/components/azure/secretproviderclass.yaml); the driver re-reads it every 2 minutes
# and the gateway reloads API_KEYS_FILE when the file changes.
resource "azurerm_key_vault" "main" {
  name                          = local.key_vault_name
  location                      = azurerm_resource_group.main.location
  resource_group_name           = azurerm_resource_group.main.name
  tenant_id                     = data.azurerm_client_config.current.tenant_id
  sku_name                      = "premium"
  enable_rbac_authorization     = true
  purge_protection_enabled      = true
  soft_delete_retention_days    = 90
  public_network_access_enabled = true
  tags                          = local.tags

  #checkov:skip=CKV_AZURE_189:Reachable only from the operator CIDRs and the cluster's egress IP (network_acls); a private endpoint needs a VNet this module does not create.
  #checkov:skip=CKV2_AZURE_32:Same: no VNet for a private endpoint; the firewall denies everything but the operator CIDRs, the cluster's egress IP and trusted Azure services.

  # The operators (to put the keys file) and the cluster (the CSI driver runs on the nodes and
  # leaves through the egress IP of aks.tf); everything else is refused.
  network_acls {
    default_action = "Deny"
    bypass         = "AzureServices"
    ip_rules       = concat(var.api_server_authorized_ip_ranges, [azurerm_public_ip.egress.ip_address])
  }
}

# Whoever runs terraform, and the cluster admins, may write the keys file.
resource "azurerm_role_assignment" "kv_secrets_officer_deployer" {
  scope                = azurerm_key_vault.main.id
  role_definition_name = "Key Vault Secrets Officer"
  principal_id         = data.azurerm_client_config.current.object_id
}

resource "azurerm_role_assignment" "kv_secrets_officer_admins" {
  for_each             = toset(var.cluster_admin_object_ids)
  scope                = azurerm_key_vault.main.id
  role_definition_name = "Key Vault Secrets Officer"
  principal_id         = each.value
}

# The cluster's Secrets Store CSI driver may read secrets (to mount the keys file from here).
resource "azurerm_role_assignment" "kv_secrets_user_aks" {
  scope                = azurerm_key_vault.main.id
  role_definition_name = "Key Vault Secrets User"
  principal_id         = azurerm_kubernetes_cluster.main.key_vault_secrets_provider[0].secret_identity[0].object_id
}

resource "azurerm_monitor_diagnostic_setting" "key_vault" {
  name                       = "${var.prefix}-kv-diagnostics"
  target_resource_id         = azurerm_key_vault.main.id
  log_analytics_workspace_id = azurerm_log_analytics_workspace.main.id

  enabled_log {
    category = "AuditEvent"
  }
}
