output "namespaces" {
  description = "Namespace of each part of the stack."
  value       = module.shepherd_stack.namespaces
}

output "release_names" {
  description = "Helm release name of each installed chart."
  value       = module.shepherd_stack.release_names
}

output "webhook_url" {
  description = "In-cluster URL of Shepherd's alert webhook."
  value       = module.shepherd_stack.webhook_url
}

output "submit_command" {
  description = "How to submit the training pipeline to this cluster."
  value       = "shepherd submit --spec specs/churn.yaml --host ${var.kfp_endpoint} --tracking-uri ${module.shepherd_stack.mlflow_tracking_uri}"
}
