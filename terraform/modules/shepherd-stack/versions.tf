terraform {
  # OpenTofu >= 1.6 or Terraform >= 1.6: nested-object provider arguments and `precondition` blocks.
  required_version = ">= 1.6.0"

  required_providers {
    helm = {
      source = "hashicorp/helm"
      # 3.x: `set` and the provider's `kubernetes` are nested-object attributes, not blocks.
      version = "~> 3.0"
    }
  }
}
