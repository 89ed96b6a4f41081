locals {
  apis = concat(
    [
      "artifactregistry.googleapis.com",
      "cloudresourcemanager.googleapis.com",
      "firestore.googleapis.com",
      "iam.googleapis.com",
      "pubsub.googleapis.com",
      "run.googleapis.com",
      "storage.googleapis.com",
    ],
    var.enable_autoscaler ? [
      "cloudscheduler.googleapis.com",
      "monitoring.googleapis.com",
      "parametermanager.googleapis.com",
    ] : [],
  )
}

resource "google_project_service" "api" {
  for_each = toset(local.apis)
  project  = var.project
  service  = each.key
  # Turning an API off on destroy would break anything else in the project that uses it.
  disable_on_destroy = false
}

data "google_project" "this" {
  project_id = var.project
}

locals {
  # Google-managed identity that forwards dead letters; it exists once the Pub/Sub API is on.
  pubsub_service_agent = "serviceAccount:service-${data.google_project.this.number}@gcp-sa-pubsub.iam.gserviceaccount.com"
}
