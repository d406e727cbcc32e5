variable "kubeconfig_path" {
  type        = string
  description = "Kubeconfig of the existing cluster to install onto."
  default     = "~/.kube/config"
}

variable "kube_context" {
  type        = string
  description = "Context in the kubeconfig to use; null means its current context."
  default     = null
}

variable "kfp_endpoint" {
  type        = string
  description = "URL of the cluster's Kubeflow Pipelines API (installed beforehand), e.g. http://ml-pipeline-ui.kubeflow."
  default     = "http://ml-pipeline-ui.kubeflow"
}

variable "shepherd_image_tag" {
  type        = string
  description = "Released tag of the Shepherd image to run."
  default     = "0.1.0"
}
