terraform {
  required_version = ">= 1.6"

  required_providers {
    google = {
      source  = "hashicorp/google"
      version = "~> 6.0"
    }
  }

  # State belongs in a GCS bucket, not in git: `terraform init -backend-config="bucket=<state bucket>"`.
  backend "gcs" {
    prefix = "medssl/gke"
  }
}

provider "google" {
  project = var.project_id
  region  = var.region
}
