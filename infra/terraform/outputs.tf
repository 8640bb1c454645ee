output "resource_group_name" {
  description = "Resource group holding everything."
  value       = azurerm_resource_group.main.name
}

output "aks_name" {
  description = "AKS cluster name."
  value       = azurerm_kubernetes_cluster.main.name
}

output "aks_get_credentials" {
  description = "Command that writes a kubeconfig for the cluster (Entra ID login; local accounts are disabled)."
  value       = "az aks get-credentials --resource-group ${azurerm_resource_group.main.name} --name ${azurerm_kubernetes_cluster.main.name}"
}

output "aks_oidc_issuer_url" {
  description = "OIDC issuer for workload identity federation."
  value       = azurerm_kubernetes_cluster.main.oidc_issuer_url
}

output "gpu_node_pool_names" {
  description = "GPU node pools: spot first, then the on-demand fallback (the autoscaler's priority expander names them)."
  value       = [azurerm_kubernetes_cluster_node_pool.gpu.name, azurerm_kubernetes_cluster_node_pool.gpu_ondemand.name]
}

output "gpu_node_taints" {
  description = "Taints of the GPU pools (the spot pool adds AKS's spot taint): the gateway and the NVIDIA device plugin must tolerate them."
  value       = local.gpu_spot_taints
}

output "gpu_capacity" {
  description = "GPUs the two GPU pools hold at their maximum: the HPA's maxReplicas plus maxSurge must not exceed it."
  value       = local.gpu_capacity
}

output "egress_ip" {
  description = "The cluster's outbound address (Key Vault's firewall admits it)."
  value       = azurerm_public_ip.egress.ip_address
}

output "tenant_id" {
  description = "Entra ID tenant of the subscription (for the SecretProviderClass)."
  value       = data.azurerm_client_config.current.tenant_id
}

output "acr_login_server" {
  description = "Registry to push images to: <acr_login_server>/llm-gateway:<tag>."
  value       = azurerm_container_registry.main.login_server
}

output "key_vault_name" {
  description = "Key Vault to store the API keys file in (secret llm-gateway-api-keys)."
  value       = azurerm_key_vault.main.name
}

output "key_vault_uri" {
  description = "Key Vault URI."
  value       = azurerm_key_vault.main.vault_uri
}

output "key_vault_secrets_provider_client_id" {
  description = "Client id of the Secrets Store CSI driver identity (the SecretProviderClass of the gpu overlay uses it)."
  value       = azurerm_kubernetes_cluster.main.key_vault_secrets_provider[0].secret_identity[0].client_id
}

output "log_analytics_workspace_id" {
  description = "Log Analytics workspace receiving container logs and diagnostics."
  value       = azurerm_log_analytics_workspace.main.id
}
