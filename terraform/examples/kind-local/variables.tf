variable "kind_cluster_name" {
  type        = string
  description = "Name of the kind cluster (`kind create cluster --name <this>`); its kubeconfig context is kind-<this>."
  default     = "shepherd"

  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", var.kind_cluster_name))
    error_message = "kind_cluster_name must be a DNS label."
  }
}

variable "shepherd_image_tag" {
  type        = string
  description = "Tag of the Shepherd image; for a locally built image, load it first with `kind load docker-image`."
  default     = "0.1.0"
}
