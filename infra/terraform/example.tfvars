# Example values: cp example.tfvars terraform.tfvars (not committed), then fill in.
# tests/infra scans the module with these values (checkov --var-file).
subscription_id                 = "00000000-0000-0000-0000-000000000000"
prefix                          = "llmgw"
location                        = "westeurope"
api_server_authorized_ip_ranges = ["203.0.113.0/24"]
gpu_vm_size                     = "Standard_NC24ads_A100_v4"
gpu_node_max_count              = 4
gpu_ondemand_node_max_count     = 2
# Object ids of the operators' Entra ID group (or users); an empty list fails the plan.
cluster_admin_object_ids = ["11111111-2222-3333-4444-555555555555"]
