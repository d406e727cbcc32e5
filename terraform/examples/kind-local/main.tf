# A laptop-sized stack on a kind cluster: KServe in Standard mode (no Knative, no Istio), no
# NetworkPolicies (kind's default CNI does not enforce them), a small Prometheus, Shepherd's own MLflow.
# Kubeflow Pipelines is optional here: pipelines can run locally (`shepherd run`) against this cluster's
# MLflow and KServe.
#   kind create cluster --name shepherd && tofu init && tofu apply
#   kubectl kustomize --load-restrictor=LoadRestrictionsNone ../../../manifests/overlays/dev | kubectl apply --server-side -f -

provider "helm" {
  kubernetes = {
    config_path    = "~/.kube/config"
    config_context = "kind-${var.kind_cluster_name}"
  }
}

module "shepherd_stack" {
  source = "../../modules/shepherd-stack"

  shepherd_image_tag     = var.shepherd_image_tag
  model_namespace        = "models-dev"
  kserve_deployment_mode = "Standard"
  network_policy_enabled = false
  helm_timeout_seconds   = 900

  # Prometheus keeps a day of data and asks for little.
  kube_prometheus_stack_values = {
    prometheus = {
      prometheusSpec = {
        retention = "1d"
        resources = { requests = { cpu = "100m", memory = "512Mi" } }
      }
    }
  }

  shepherd_values = {
    commonLabels = {
      "app.kubernetes.io/environment" = "dev"
    }
  }
}
