variable "subscription_id" {
  description = "Azure subscription to deploy into (azurerm 4.x requires it explicitly)."
  type        = string

  validation {
    condition     = can(regex("^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$", var.subscription_id))
    error_message = "subscription_id must be a GUID."
  }
}

variable "prefix" {
  description = "Short name prefix for every resource (lowercase letters and digits, 3-12 chars); also names the ACR and Key Vault, which must be globally unique."
  type        = string
  default     = "llmgw"

  validation {
    condition     = can(regex("^[a-z][a-z0-9]{2,11}$", var.prefix))
    error_message = "prefix must be 3-12 lowercase letters or digits, starting with a letter."
  }
}

variable "location" {
  description = "Azure region; pick one where the GPU VM size has spot capacity and quota."
  type        = string
  default     = "westeurope"

  validation {
    condition     = can(regex("^[a-z]+[a-z0-9]*$", var.location))
    error_message = "location must be an Azure region name such as westeurope or eastus2."
  }
}

variable "kubernetes_version" {
  description = "AKS Kubernetes minor version (patches follow the automatic upgrade channel). AKS supports the newest three GA minors, 12 months each: in December 2026 those are 1.35 (end of life Mar 2027), 1.36 (Jun 2027) and 1.37 (Oct 2027), per https://learn.microsoft.com/azure/aks/supported-kubernetes-versions. Raise the floor below when a minor leaves support."
  type        = string
  default     = "1.36"
  nullable    = false

  validation {
    condition     = can(regex("^1\\.[0-9]{2}$", var.kubernetes_version)) && try(tonumber(split(".", var.kubernetes_version)[1]) >= 35, false)
    error_message = "kubernetes_version must be an AKS-supported minor version such as 1.36 (1.35 or newer)."
  }
}

variable "system_vm_size" {
  description = "VM size of the system node pool (CoreDNS, metrics, Redis, Prometheus)."
  type        = string
  default     = "Standard_D4ds_v5"

  validation {
    condition     = can(regex("^Standard_[A-Za-z0-9_]+$", var.system_vm_size))
    error_message = "system_vm_size must be an Azure VM size such as Standard_D4ds_v5."
  }
}

variable "system_node_min_count" {
  description = "Minimum nodes of the system pool (at least 2 for zone-redundant system pods)."
  type        = number
  default     = 2

  validation {
    condition     = var.system_node_min_count >= 1 && var.system_node_min_count <= 10
    error_message = "system_node_min_count must be between 1 and 10."
  }
}

variable "system_node_max_count" {
  description = "Maximum nodes of the system pool."
  type        = number
  default     = 4

  validation {
    condition     = var.system_node_max_count >= 1 && var.system_node_max_count <= 50
    error_message = "system_node_max_count must be between 1 and 50."
  }
}

variable "gpu_vm_size" {
  description = "VM size of both GPU pools (spot and on-demand fallback): one of gpu-vm-sizes.json, whose vCPUs and memory hold the gpu overlay's pod (tests/infra checks it), e.g. Standard_NC24ads_A100_v4 or Standard_NC8as_T4_v3."
  type        = string
  default     = "Standard_NC24ads_A100_v4"

  validation {
    condition     = contains(keys(local.gpu_vm_sizes), var.gpu_vm_size)
    error_message = "gpu_vm_size must be one of the sizes in gpu-vm-sizes.json (add a size there after checking that the gpu overlay's requests fit it)."
  }
}

variable "gpu_node_max_count" {
  description = "Maximum GPU spot nodes; the pool scales from 0 (no GPU cost while idle) to this."
  type        = number
  default     = 4

  validation {
    condition     = var.gpu_node_max_count >= 1 && var.gpu_node_max_count <= 100
    error_message = "gpu_node_max_count must be between 1 and 100."
  }
}

variable "gpu_ondemand_node_max_count" {
  description = "Maximum on-demand GPU nodes, used only when the spot pool cannot grow (no spot capacity or quota); scales from 0. HPA maxReplicas + maxSurge must fit in the two pools together."
  type        = number
  default     = 2

  validation {
    condition     = var.gpu_ondemand_node_max_count >= 1 && var.gpu_ondemand_node_max_count <= 100
    error_message = "gpu_ondemand_node_max_count must be between 1 and 100: one eviction wave must not leave the service without any GPU."
  }
}

variable "gpu_spot_max_price" {
  description = "Highest hourly price for a GPU spot VM in USD; -1 pays up to the on-demand price (evicted for capacity only)."
  type        = number
  default     = -1

  validation {
    condition     = var.gpu_spot_max_price == -1 || var.gpu_spot_max_price > 0
    error_message = "gpu_spot_max_price must be -1 or a positive price."
  }
}

variable "gpu_os_disk_size_gb" {
  description = "OS disk of GPU nodes: holds the container images (the CUDA image is ~10 GiB) and the pods' scratch space; the model cache is a PVC."
  type        = number
  default     = 256

  validation {
    condition     = var.gpu_os_disk_size_gb >= 128 && var.gpu_os_disk_size_gb <= 2048
    error_message = "gpu_os_disk_size_gb must be between 128 and 2048."
  }
}

variable "zones" {
  description = "Availability zones for the node pools; [] where the region has none."
  type        = list(string)
  default     = ["1", "2", "3"]

  validation {
    condition     = alltrue([for zone in var.zones : contains(["1", "2", "3"], zone)])
    error_message = "zones may only hold \"1\", \"2\" and \"3\"."
  }
}

variable "api_server_authorized_ip_ranges" {
  description = "CIDRs allowed to reach the Kubernetes API server (operators, CI runners)."
  type        = list(string)

  validation {
    condition     = length(var.api_server_authorized_ip_ranges) > 0 && alltrue([for cidr in var.api_server_authorized_ip_ranges : can(cidrhost(cidr, 0))])
    error_message = "api_server_authorized_ip_ranges must be a non-empty list of CIDRs such as 203.0.113.0/24."
  }
}

variable "cluster_admin_object_ids" {
  description = "Entra ID object ids (groups, users or service principals) that operate the cluster: Azure Kubernetes Service RBAC Cluster Admin + Cluster User Role on AKS (local accounts are off, so nobody else can use kubectl) and Secrets Officer on Key Vault. Find yours with: az ad signed-in-user show --query id -o tsv"
  type        = list(string)
  nullable    = false

  validation {
    condition     = length(var.cluster_admin_object_ids) > 0
    error_message = "cluster_admin_object_ids is empty: with local accounts off and Azure RBAC on, nobody could use kubectl on the cluster. Add at least one group or user object id."
  }

  validation {
    condition     = alltrue([for id in var.cluster_admin_object_ids : can(regex("^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$", id))])
    error_message = "cluster_admin_object_ids must hold Entra ID object ids (GUIDs)."
  }
}

variable "log_retention_days" {
  description = "Days Log Analytics keeps container logs and metrics."
  type        = number
  default     = 30

  validation {
    condition     = var.log_retention_days >= 30 && var.log_retention_days <= 730
    error_message = "log_retention_days must be between 30 and 730."
  }
}

variable "acr_retention_days" {
  description = "Days untagged image manifests are kept in the registry."
  type        = number
  default     = 7

  validation {
    condition     = var.acr_retention_days >= 0 && var.acr_retention_days <= 365
    error_message = "acr_retention_days must be between 0 and 365."
  }
}

variable "tags" {
  description = "Tags added to every resource."
  type        = map(string)
  default = {
    project = "llm-gateway"
  }
}
