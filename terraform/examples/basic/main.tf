# The whole stack on an existing cluster with its defaults: cert-manager, KServe in Standard mode,
# kube-prometheus-stack and Shepherd with its own MLflow. Kubeflow Pipelines is installed beforehand.
#   tofu init && tofu apply          (or terraform)
# then apply the model namespace, ServingRuntime and runner RBAC:
#   kubectl kustomize --load-restrictor=LoadRestrictionsNone ../../../manifests/overlays/prod | kubectl apply --server-side -f -

provider "helm" {
  kubernetes = {
    config_path    = var.kubeconfig_path
    config_context = var.kube_context
  }
}

module "shepherd_stack" {
  source = "../../modules/shepherd-stack"

  shepherd_image_tag = var.shepherd_image_tag
  model_namespace    = "models"
  kfp_endpoint       = var.kfp_endpoint

  shepherd_values = {
    # Anything in helm/shepherd/values.yaml without a typed variable in the module.
    commonLabels = {
      "app.kubernetes.io/environment" = "prod"
    }
  }
}
