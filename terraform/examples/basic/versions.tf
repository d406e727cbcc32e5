terraform {
  required_version = ">= 1.6.0"

  required_providers {
    helm = {
      source = "hashicorp/helm"
      # A root configuration pins the exact provider version (the module accepts any 3.x).
      version = "3.0.2"
    }
  }
}
