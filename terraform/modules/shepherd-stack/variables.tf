# ---------------------------------------------------------------------------------------------------
# Shepherd itself (the chart in helm/shepherd)
# ---------------------------------------------------------------------------------------------------
variable "shepherd_release_name" {
  type        = string
  description = "Helm release name of Shepherd's own chart; also the prefix of its Services."
  default     = "shepherd"

  validation {
    condition     = can(regex("^[a-z]([-a-z0-9]{0,51}[a-z0-9])?$", var.shepherd_release_name))
    error_message = "shepherd_release_name must be a DNS label of at most 53 characters (a Helm release name)."
  }
}

variable "shepherd_namespace" {
  type        = string
  description = "Namespace of Shepherd's control plane (MLflow, drift service, alert webhook, dashboards); created if missing."
  default     = "shepherd"

  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", var.shepherd_namespace))
    error_message = "shepherd_namespace must be a DNS label (lower-case letters, digits and '-', at most 63 characters)."
  }
}

variable "shepherd_chart_path" {
  type        = string
  description = "Path of Shepherd's chart. Null means the chart in this repository (helm/shepherd, relative to this module)."
  default     = null
}

variable "shepherd_image_repository" {
  type        = string
  description = "Container image repository of the Shepherd platform image (pipeline steps, predictor, services)."
  default     = "ghcr.io/shepherd-mlops/shepherd"

  validation {
    condition     = length(var.shepherd_image_repository) > 0 && !can(regex(":", var.shepherd_image_repository))
    error_message = "shepherd_image_repository is the repository only, without a tag (set shepherd_image_tag)."
  }
}

variable "shepherd_image_tag" {
  type        = string
  description = "Tag of the Shepherd platform image; pin a released version, never `latest`."
  default     = "0.1.0"

  validation {
    condition     = var.shepherd_image_tag != "latest" && can(regex("^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$", var.shepherd_image_tag))
    error_message = "shepherd_image_tag must be a valid image tag other than `latest`."
  }
}

variable "model_namespace" {
  type        = string
  description = "Namespace the InferenceServices live in (the spec's deployment.namespace). Create it with manifests/overlays/<env>."
  default     = "models"

  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", var.model_namespace))
    error_message = "model_namespace must be a DNS label (lower-case letters, digits and '-', at most 63 characters)."
  }
}

variable "mlflow_enabled" {
  type        = bool
  description = "Run the MLflow tracking server from Shepherd's chart. False means an existing server given by mlflow_external_url."
  default     = true
}

variable "mlflow_external_url" {
  type        = string
  description = "URL of an existing MLflow tracking server, used when mlflow_enabled is false (e.g. http://mlflow.mlflow:5000)."
  default     = null

  validation {
    condition     = var.mlflow_external_url == null || can(regex("^https?://", var.mlflow_external_url))
    error_message = "mlflow_external_url must start with http:// or https://."
  }
}

variable "mlflow_backend_store_existing_secret" {
  type        = string
  description = "Name of an existing Secret in shepherd_namespace holding the chart MLflow server's backend store URI (key `uri`), e.g. postgresql://mlflow:...@db:5432/mlflow; null keeps SQLite on the server's volume (one replica only)."
  default     = null
}

variable "feature_repo" {
  type        = string
  description = "Feast store of retraining runs: a postgresql://user:password@host:port/database URI holding the registry, offline rows and online store that every step pod shares; null leaves each step pod its own (lost with it)."
  default     = null

  validation {
    condition     = var.feature_repo == null || can(regex("^postgres(ql)?(\\+psycopg)?://", var.feature_repo))
    error_message = "feature_repo must be a postgresql:// URI."
  }
}

variable "shepherd_monitoring_enabled" {
  type        = bool
  description = "Install Shepherd's PrometheusRules, ServiceMonitors and Alertmanager routes (needs the Prometheus Operator CRDs, e.g. from kube-prometheus-stack)."
  default     = true
}

variable "dashboards_enabled" {
  type        = bool
  description = "Install Shepherd's Grafana dashboards as ConfigMaps picked up by the Grafana sidecar."
  default     = true
}

variable "network_policy_enabled" {
  type        = bool
  description = "Install NetworkPolicies that limit who may reach Shepherd's services (needs a CNI that enforces them)."
  default     = true
}

variable "webhook_token_existing_secret" {
  type        = string
  description = "Name of an existing Secret in shepherd_namespace holding the bearer token Alertmanager sends to the alert webhook (key `token`); null lets the chart generate one."
  default     = null
}

variable "feedback_token_existing_secret" {
  type        = string
  description = "Name of an existing Secret in shepherd_namespace holding the bearer token clients present to post ground truth to the drift service's feedback endpoint (key `token`); null lets the chart generate one. Used only with feature_repo (the outcome ledger lives there)."
  default     = null
}

variable "shepherd_values" {
  type        = any
  description = "Further values for Shepherd's chart (helm/shepherd/values.yaml). They override the module's wiring (Prometheus URL, NetworkPolicy namespaces) but not the typed variables above."
  default     = {}
}

# ---------------------------------------------------------------------------------------------------
# cert-manager (KServe's webhooks need certificates)
# ---------------------------------------------------------------------------------------------------
variable "cert_manager_enabled" {
  type        = bool
  description = "Install cert-manager (jetstack chart). Set false if the cluster already runs it."
  default     = true
}

variable "cert_manager_version" {
  type        = string
  description = "Version of the jetstack/cert-manager chart."
  default     = "v1.19.1"

  validation {
    condition     = can(regex("^v[0-9]+\\.[0-9]+\\.[0-9]+$", var.cert_manager_version))
    error_message = "cert_manager_version must be an exact version such as v1.19.1."
  }
}

variable "cert_manager_namespace" {
  type        = string
  description = "Namespace for cert-manager; created if missing."
  default     = "cert-manager"

  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", var.cert_manager_namespace))
    error_message = "cert_manager_namespace must be a DNS label."
  }
}

# ---------------------------------------------------------------------------------------------------
# KServe
# ---------------------------------------------------------------------------------------------------
variable "kserve_enabled" {
  type        = bool
  description = "Install KServe (the kserve-crd and kserve-resources charts from oci://ghcr.io/kserve/charts)."
  default     = true
}

variable "kserve_version" {
  type        = string
  description = "KServe version (both charts). Shepherd's Standard-mode canaries (spec.canary[]) need v0.20 or later; the tests validate against v0.20.0's CRDs."
  default     = "v0.20.0"

  validation {
    condition     = can(regex("^v0\\.(2[0-9]|[3-9][0-9])\\.[0-9]+$", var.kserve_version))
    error_message = "kserve_version must be an exact version v0.20.0 or later (spec.canary[] arrived in v0.20)."
  }
}

variable "kserve_namespace" {
  type        = string
  description = "Namespace for the KServe controller; created if missing."
  default     = "kserve"

  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", var.kserve_namespace))
    error_message = "kserve_namespace must be a DNS label."
  }
}

variable "kserve_deployment_mode" {
  type        = string
  description = "KServe's default deployment mode: Standard (plain Deployments, no Knative) or Knative (needs Knative Serving and a networking layer installed first)."
  default     = "Standard"

  validation {
    condition     = contains(["Standard", "Knative"], var.kserve_deployment_mode)
    error_message = "kserve_deployment_mode must be Standard or Knative."
  }
}

variable "kserve_values" {
  type        = any
  description = "Further values for the kserve-resources chart (e.g. the gateway settings of the cluster's ingress)."
  default     = {}
}

# ---------------------------------------------------------------------------------------------------
# Monitoring: kube-prometheus-stack (Prometheus, Alertmanager, Grafana, the Prometheus Operator)
# ---------------------------------------------------------------------------------------------------
variable "monitoring_enabled" {
  type        = bool
  description = "Install kube-prometheus-stack. Set false if the cluster already runs the Prometheus Operator."
  default     = true
}

variable "kube_prometheus_stack_version" {
  type        = string
  description = "Version of the prometheus-community/kube-prometheus-stack chart."
  default     = "79.10.0"

  validation {
    condition     = can(regex("^[0-9]+\\.[0-9]+\\.[0-9]+$", var.kube_prometheus_stack_version))
    error_message = "kube_prometheus_stack_version must be an exact chart version such as 79.10.0."
  }
}

variable "kube_prometheus_stack_values" {
  type        = any
  description = "Further values for kube-prometheus-stack (e.g. retention, storage, resources)."
  default     = {}
}

variable "monitoring_namespace" {
  type        = string
  description = "Namespace for kube-prometheus-stack; created if missing."
  default     = "monitoring"

  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", var.monitoring_namespace))
    error_message = "monitoring_namespace must be a DNS label."
  }
}

# ---------------------------------------------------------------------------------------------------
# Kubeflow Pipelines: a prerequisite, not installed here (terraform/README.md says why)
# ---------------------------------------------------------------------------------------------------
variable "kfp_endpoint" {
  type        = string
  description = "URL of the existing Kubeflow Pipelines API (e.g. http://ml-pipeline-ui.kubeflow): where the alert webhook starts retraining runs and `shepherd submit --host` points. Null: retraining alerts are only logged."
  default     = null

  validation {
    condition     = var.kfp_endpoint == null || can(regex("^https?://", var.kfp_endpoint))
    error_message = "kfp_endpoint must start with http:// or https://."
  }
}

variable "kfp_namespace" {
  type        = string
  description = "Namespace of the existing Kubeflow Pipelines install: its pipeline pods may reach MLflow through the chart's NetworkPolicy (and manifests/ puts the runner ServiceAccount there)."
  default     = "kubeflow"

  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", var.kfp_namespace))
    error_message = "kfp_namespace must be a DNS label."
  }
}

# ---------------------------------------------------------------------------------------------------
# How the releases are applied
# ---------------------------------------------------------------------------------------------------
variable "helm_timeout_seconds" {
  type        = number
  description = "Seconds Helm waits for each release's resources to become ready."
  default     = 600

  validation {
    condition     = var.helm_timeout_seconds >= 60 && var.helm_timeout_seconds <= 3600
    error_message = "helm_timeout_seconds must be between 60 and 3600."
  }
}

variable "atomic" {
  type        = bool
  description = "Roll a release back when its install or upgrade fails, instead of leaving it half-applied."
  default     = true
}
