terraform {
  # 1.9: variable validations may refer to locals (gpu_vm_size is checked against
  # gpu-vm-sizes.json).
  required_version = ">= 1.9.0, < 2.0.0"

  required_providers {
    azurerm = {
      source  = "hashicorp/azurerm"
      version = "~> 4.14"
    }
  }

  # State holds no key material (API keys are put into Key Vault out of band), but keep it
  # remote and locked in a team: uncomment and fill, or pass -backend-config at init.
  # backend "azurerm" {
  #   resource_group_name  = "tfstate"
  #   storage_account_name = "tfstatellmgw"
  #   container_name       = "tfstate"
  #   key                  = "llm-gateway.tfstate"
  #   use_azuread_auth     = true
  # }
}

provider "azurerm" {
  features {
    key_vault {
      # Soft-deleted vaults keep their keys for the retention period: never purge on destroy.
      purge_soft_delete_on_destroy = false
    }
  }
  subscription_id = var.subscription_id
}
