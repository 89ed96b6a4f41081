terraform {
  required_version = ">= 1.5.0"

  required_providers {
    google = {
      source = "hashicorp/google"
      # 7.28 is the first release whose google_cloud_run_v2_worker_pool needs no
      # launch_stage = "BETA" (worker pools GA). It also has the fixes this configuration relies
      # on: manual_instance_count may be 0 (6.47) and no permadiff on scaling.scaling_mode (7.18).
      version = ">= 7.28.0, < 8.0.0"
    }
  }
}

provider "google" {
  project = var.project
  region  = var.region

  default_labels = merge({ app = "dvid2ng", fleet = var.name_prefix }, var.labels)
}
