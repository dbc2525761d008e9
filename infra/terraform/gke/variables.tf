variable "project_id" {
  description = "GCP project that holds the cluster and the bucket."
  type        = string
}

variable "region" {
  description = "Region of the bucket and of the network."
  type        = string
  default     = "europe-west4"
}

variable "zone" {
  description = "Zone of the (zonal) cluster; it must offer var.gpu_type."
  type        = string
  default     = "europe-west4-a"
}

variable "cluster_name" {
  description = "GKE cluster name."
  type        = string
  default     = "medssl"
}

variable "cpu_machine_type" {
  description = "Machine type of the CPU pool (MLflow, PostgreSQL, Ray head, KFP)."
  type        = string
  default     = "e2-standard-8"
}

variable "cpu_min_nodes" {
  description = "Minimum size of the CPU pool."
  type        = number
  default     = 1
}

variable "cpu_max_nodes" {
  description = "Maximum size of the CPU pool."
  type        = number
  default     = 4
}

variable "gpu_machine_type" {
  description = "Machine type of the GPU pool (g2-standard-8: 8 vCPU, 32 GB, one L4)."
  type        = string
  default     = "g2-standard-8"
}

variable "gpu_type" {
  description = "Accelerator type attached to each GPU node."
  type        = string
  default     = "nvidia-l4"
}

variable "gpu_count" {
  description = "GPUs per GPU node (RayCluster workers ask for one each)."
  type        = number
  default     = 1
}

variable "gpu_max_nodes" {
  description = "Maximum size of the GPU pool; it scales down to zero when idle."
  type        = number
  default     = 4
}

variable "gpu_spot" {
  description = "Use Spot VMs for the GPU pool (cheaper; training resumes from checkpoints)."
  type        = bool
  default     = false
}

variable "artifact_bucket" {
  description = "Name of the GCS bucket for MLflow artifacts and the DVC remote (default: <project>-medssl-artifacts)."
  type        = string
  default     = ""
}
