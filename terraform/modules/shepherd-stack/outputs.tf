# Service names follow the chart's helpers (helm/shepherd/templates/_helpers.tpl): "<fullname>-<component>",
# where fullname is fullnameOverride, else the release name if it contains "shepherd", else
# "<release>-shepherd" (cut to 50); ports are the chart's defaults unless shepherd_values changes them.
locals {
  fullname = trimsuffix(substr(
    try(var.shepherd_values.fullnameOverride, "") != "" ? var.shepherd_values.fullnameOverride : (
      strcontains(var.shepherd_release_name, "shepherd") ? var.shepherd_release_name : "${var.shepherd_release_name}-shepherd"
    ),
    0, 50
  ), "-")
  service_domain = "${var.shepherd_namespace}.svc"
  webhook_port   = try(var.shepherd_values.service.port, 8080)
  mlflow_port    = try(var.shepherd_values.mlflow.service.port, 5000)
}

output "namespaces" {
  description = "Namespace of each part of the stack (model and kfp are not created here: see manifests/overlays and the KFP install)."
  value = {
    cert_manager = var.cert_manager_enabled ? var.cert_manager_namespace : null
    kserve       = var.kserve_enabled ? var.kserve_namespace : null
    monitoring   = var.monitoring_enabled ? var.monitoring_namespace : null
    shepherd     = helm_release.shepherd.namespace
    models       = var.model_namespace
    kfp          = var.kfp_namespace
  }
}

output "release_names" {
  description = "Helm release name of each installed chart (null for a part that is disabled)."
  value       = local.releases
}

output "shepherd_release" {
  description = "Name, namespace and status of Shepherd's release, as Helm reports them after apply."
  value = {
    name      = helm_release.shepherd.name
    namespace = helm_release.shepherd.namespace
    status    = helm_release.shepherd.status
  }
}

output "webhook_url" {
  description = "In-cluster URL of Shepherd's alert webhook (Alertmanager posts alerts here; it triggers rollbacks and retraining)."
  value       = "http://${local.fullname}-webhook.${local.service_domain}:${local.webhook_port}/alerts"
}

output "mlflow_tracking_uri" {
  description = "MLflow tracking URI the pipeline and the predictors use (`shepherd submit --tracking-uri`)."
  value       = var.mlflow_enabled ? "http://${local.fullname}-mlflow.${local.service_domain}:${local.mlflow_port}" : var.mlflow_external_url
}

output "kfp_endpoint" {
  description = "The Kubeflow Pipelines API given as input (`shepherd submit --host`, the webhook's retraining runs); null if none."
  value       = var.kfp_endpoint
}
