output "namespaces" {
  description = "Namespace of each part of the stack."
  value       = module.shepherd_stack.namespaces
}

output "mlflow_tracking_uri" {
  description = "MLflow inside the cluster; reach it from the laptop with `kubectl port-forward`."
  value       = module.shepherd_stack.mlflow_tracking_uri
}

output "webhook_url" {
  description = "In-cluster URL of Shepherd's alert webhook."
  value       = module.shepherd_stack.webhook_url
}
