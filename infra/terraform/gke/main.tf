# GKE for medssl: a zonal cluster with Dataplane V2 (enforces the NetworkPolicies in infra/k8s),
# Workload Identity, a CPU node pool and a GPU node pool that scales to zero. The GPU nodes carry
# the label and taint the RayCluster's GPU group and the KFP GPU steps select and tolerate
# (medssl.io/pool=gpu, nvidia.com/gpu:NoSchedule); GKE installs the NVIDIA driver.

locals {
  artifact_bucket = var.artifact_bucket != "" ? var.artifact_bucket : "${var.project_id}-medssl-artifacts"
}

resource "google_container_cluster" "medssl" {
  name     = var.cluster_name
  location = var.zone

  # node pools are managed below
  remove_default_node_pool = true
  initial_node_count       = 1

  datapath_provider   = "ADVANCED_DATAPATH"
  deletion_protection = true

  release_channel {
    channel = "REGULAR"
  }

  workload_identity_config {
    workload_pool = "${var.project_id}.svc.id.goog"
  }
}

resource "google_container_node_pool" "cpu" {
  name     = "cpu"
  cluster  = google_container_cluster.medssl.id
  location = var.zone

  autoscaling {
    min_node_count = var.cpu_min_nodes
    max_node_count = var.cpu_max_nodes
  }

  management {
    auto_repair  = true
    auto_upgrade = true
  }

  node_config {
    machine_type = var.cpu_machine_type
    disk_size_gb = 100
    oauth_scopes = ["https://www.googleapis.com/auth/cloud-platform"]

    labels = {
      "medssl.io/pool" = "cpu"
    }

    workload_metadata_config {
      mode = "GKE_METADATA"
    }
  }
}

resource "google_container_node_pool" "gpu" {
  name     = "gpu"
  cluster  = google_container_cluster.medssl.id
  location = var.zone

  # no node while no GPU pod is pending: the cluster autoscaler adds one per pending Ray worker
  # or KFP GPU step and removes it when idle
  initial_node_count = 0

  autoscaling {
    min_node_count = 0
    max_node_count = var.gpu_max_nodes
  }

  management {
    auto_repair  = true
    auto_upgrade = true
  }

  node_config {
    machine_type = var.gpu_machine_type
    disk_size_gb = 200
    spot         = var.gpu_spot
    oauth_scopes = ["https://www.googleapis.com/auth/cloud-platform"]

    guest_accelerator {
      type  = var.gpu_type
      count = var.gpu_count

      gpu_driver_installation_config {
        gpu_driver_version = "LATEST"
      }
    }

    labels = {
      "medssl.io/pool" = "gpu"
    }

    taint {
      key    = "nvidia.com/gpu"
      value  = "present"
      effect = "NO_SCHEDULE"
    }

    workload_metadata_config {
      mode = "GKE_METADATA"
    }
  }
}

# MLflow artifacts (s3://<bucket>/mlflow through GCS's S3-compatible API) and the DVC remote
# (s3://<bucket>/dvc).
resource "google_storage_bucket" "artifacts" {
  name                        = local.artifact_bucket
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = false

  versioning {
    enabled = true
  }
}

# The identity behind the HMAC key in secret medssl-credentials. The key itself is created
# outside Terraform (`gcloud storage hmac create`), so its secret never lands in the state.
resource "google_service_account" "medssl" {
  account_id   = "medssl-storage"
  display_name = "medssl: MLflow artifacts and DVC remote"
}

resource "google_storage_bucket_iam_member" "medssl_objects" {
  bucket = google_storage_bucket.artifacts.name
  role   = "roles/storage.objectAdmin"
  member = "serviceAccount:${google_service_account.medssl.email}"
}
