# Installs the Shepherd stack onto an existing cluster, in dependency order:
#   cert-manager -> KServe CRDs -> KServe controller
#   kube-prometheus-stack (Prometheus Operator CRDs, Prometheus, Alertmanager, Grafana)
#   Shepherd's chart (after both, since it ships PrometheusRules/ServiceMonitors and serves models via KServe)
# Kubeflow Pipelines is a prerequisite (see README.md): there is no official Helm chart to install.

locals {
  shepherd_chart = coalesce(var.shepherd_chart_path, "${path.module}/../../../helm/shepherd")

  # Typed inputs as `set` entries: they are listed once here, checked against the chart's values.yaml
  # by tests/unit/test_terraform.py, and win over everything in `values` below.
  shepherd_settings = concat(
    [
      { name = "image.repository", value = var.shepherd_image_repository },
      { name = "image.tag", value = var.shepherd_image_tag },
      { name = "modelNamespace", value = var.model_namespace },
      { name = "mlflow.enabled", value = tostring(var.mlflow_enabled) },
      { name = "monitoring.enabled", value = tostring(var.shepherd_monitoring_enabled) },
      { name = "dashboards.enabled", value = tostring(var.dashboards_enabled) },
      { name = "networkPolicy.enabled", value = tostring(var.network_policy_enabled) },
    ],
    var.mlflow_external_url == null ? [] : [{ name = "mlflow.externalUrl", value = var.mlflow_external_url }],
    var.webhook_token_existing_secret == null ? [] : [{ name = "webhook.token.existingSecret", value = var.webhook_token_existing_secret }],
    var.kfp_endpoint == null ? [] : [{ name = "webhook.kfpHost", value = var.kfp_endpoint }],
    var.feature_repo == null ? [] : [{ name = "webhook.featureRepo", value = var.feature_repo }],
    var.feedback_token_existing_secret == null ? [] : [{ name = "drift.feedback.token.existingSecret", value = var.feedback_token_existing_secret }],
    var.mlflow_backend_store_existing_secret == null ? [] : [{ name = "mlflow.backendStore.existingSecret", value = var.mlflow_backend_store_existing_secret }],
  )

  # kube-prometheus-stack set up to pick up what Shepherd's chart ships (helm/shepherd/README.md):
  # rules, ServiceMonitors and PodMonitors of every release; the AlertmanagerConfig in Shepherd's
  # namespace without the namespace matcher (Shepherd's alerts are per model, not per namespace);
  # dashboards from labelled ConfigMaps in every namespace, filed by their grafana_folder annotation.
  monitoring_wiring = {
    prometheus = {
      prometheusSpec = {
        ruleSelectorNilUsesHelmValues           = false
        serviceMonitorSelectorNilUsesHelmValues = false
        podMonitorSelectorNilUsesHelmValues     = false
      }
    }
    alertmanager = {
      alertmanagerSpec = {
        alertmanagerConfigSelector          = { matchLabels = { "app.kubernetes.io/part-of" = "shepherd" } }
        alertmanagerConfigNamespaceSelector = { matchLabels = { "kubernetes.io/metadata.name" = var.shepherd_namespace } }
        alertmanagerConfigMatcherStrategy   = { type = "None" }
      }
    }
    grafana = {
      sidecar = {
        dashboards = {
          enabled          = true
          searchNamespace  = "ALL"
          folderAnnotation = "grafana_folder"
          provider         = { foldersFromFilesStructure = true }
        }
      }
    }
  }

  # Where the other releases are, derived from this module's inputs; shepherd_values may override it.
  shepherd_wiring = {
    controller = {
      prometheusUrl = "http://prometheus-operated.${var.monitoring_namespace}.svc:9090"
    }
    networkPolicy = {
      prometheus = {
        namespaceSelector = { matchLabels = { "kubernetes.io/metadata.name" = var.monitoring_namespace } }
      }
      alertmanager = {
        namespaceSelector = { matchLabels = { "kubernetes.io/metadata.name" = var.monitoring_namespace } }
      }
      mlflowFrom = [
        { namespaceSelector = { matchLabels = { "kubernetes.io/metadata.name" = var.kfp_namespace } } },
      ]
    }
  }

  releases = {
    cert_manager          = var.cert_manager_enabled ? "cert-manager" : null
    kserve_crd            = var.kserve_enabled ? "kserve-crd" : null
    kserve                = var.kserve_enabled ? "kserve-resources" : null
    kube_prometheus_stack = var.monitoring_enabled ? "kube-prometheus-stack" : null
    shepherd              = var.shepherd_release_name
  }
}

resource "helm_release" "cert_manager" {
  count = var.cert_manager_enabled ? 1 : 0

  name             = "cert-manager"
  repository       = "https://charts.jetstack.io"
  chart            = "cert-manager"
  version          = var.cert_manager_version
  namespace        = var.cert_manager_namespace
  create_namespace = true
  atomic           = var.atomic
  timeout          = var.helm_timeout_seconds

  set = [
    # The chart installs and upgrades its own CRDs.
    { name = "crds.enabled", value = "true" },
  ]
}

resource "helm_release" "kserve_crd" {
  count = var.kserve_enabled ? 1 : 0

  name             = "kserve-crd"
  repository       = "oci://ghcr.io/kserve/charts"
  chart            = "kserve-crd"
  version          = var.kserve_version
  namespace        = var.kserve_namespace
  create_namespace = true
  atomic           = var.atomic
  timeout          = var.helm_timeout_seconds
}

resource "helm_release" "kserve" {
  count = var.kserve_enabled ? 1 : 0

  name             = "kserve-resources"
  repository       = "oci://ghcr.io/kserve/charts"
  chart            = "kserve-resources"
  version          = var.kserve_version
  namespace        = var.kserve_namespace
  create_namespace = true
  atomic           = var.atomic
  timeout          = var.helm_timeout_seconds

  values = [yamlencode(var.kserve_values)]
  set = [
    { name = "kserve.version", value = var.kserve_version },
    { name = "kserve.controller.deploymentMode", value = var.kserve_deployment_mode },
  ]

  # KServe's webhooks take their certificates from cert-manager; its CRDs come from the other chart.
  depends_on = [helm_release.cert_manager, helm_release.kserve_crd]
}

resource "helm_release" "kube_prometheus_stack" {
  count = var.monitoring_enabled ? 1 : 0

  name             = "kube-prometheus-stack"
  repository       = "https://prometheus-community.github.io/helm-charts"
  chart            = "kube-prometheus-stack"
  version          = var.kube_prometheus_stack_version
  namespace        = var.monitoring_namespace
  create_namespace = true
  atomic           = var.atomic
  timeout          = var.helm_timeout_seconds

  # Later entries win: the caller's kube_prometheus_stack_values override the wiring.
  values = [yamlencode(local.monitoring_wiring), yamlencode(var.kube_prometheus_stack_values)]
}

resource "helm_release" "shepherd" {
  name             = var.shepherd_release_name
  chart            = local.shepherd_chart
  namespace        = var.shepherd_namespace
  create_namespace = true
  atomic           = var.atomic
  timeout          = var.helm_timeout_seconds

  # Later entries win (Helm merges them deeply); `set` wins over all of them.
  values = [yamlencode(local.shepherd_wiring), yamlencode(var.shepherd_values)]
  set    = local.shepherd_settings

  depends_on = [helm_release.kserve, helm_release.kube_prometheus_stack]

  lifecycle {
    precondition {
      condition     = var.mlflow_enabled || var.mlflow_external_url != null
      error_message = "Set mlflow_external_url when mlflow_enabled is false: the pipeline and the predictors need a tracking server."
    }
  }
}
