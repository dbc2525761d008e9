output "cluster_name" {
  description = "GKE cluster name."
  value       = google_container_cluster.medssl.name
}

output "cluster_endpoint" {
  description = "Control-plane endpoint."
  value       = google_container_cluster.medssl.endpoint
  sensitive   = true
}

output "get_credentials" {
  description = "Command that writes a kubeconfig entry for the cluster."
  value       = "gcloud container clusters get-credentials ${google_container_cluster.medssl.name} --zone ${var.zone} --project ${var.project_id}"
}

output "artifact_bucket" {
  description = "Bucket for MLflow artifacts and the DVC remote (the bucket in infra/k8s/overlays/gke/kustomization.yaml)."
  value       = google_storage_bucket.artifacts.name
}

output "storage_service_account" {
  description = "Service account to create the HMAC key for (gcloud storage hmac create)."
  value       = google_service_account.medssl.email
}

output "gpu_pool" {
  description = "GPU node pool: node selector and taint that GPU workloads use."
  value = {
    node_selector = { "medssl.io/pool" = "gpu" }
    taint         = "nvidia.com/gpu=present:NoSchedule"
    max_nodes     = var.gpu_max_nodes
  }
}
