# The worker image. Cloud Run pulls it with its own service agent, which may read Artifact
# Registry repositories of the same project, so no service account here needs a reader role.
resource "google_artifact_registry_repository" "images" {
  # checkov:skip=CKV_GCP_84:The image holds this open-source code and its public dependencies, no credentials or data (see .dockerignore); Google-managed encryption at rest applies, and a customer key would only add a KMS dependency to every deploy.
  repository_id = var.name_prefix
  location      = var.region
  format        = "DOCKER"
  description   = "dvid2ng worker images"

  docker_config {
    # Deploy by version tag (docs/deploy.md tags each build with its git commit); a tag never
    # moves, so a worker pool revision always runs the code it was deployed with.
    immutable_tags = true
  }

  cleanup_policy_dry_run = false
  cleanup_policies {
    id     = "keep-recent"
    action = "KEEP"
    most_recent_versions {
      keep_count = 10
    }
  }
  cleanup_policies {
    id     = "delete-old"
    action = "DELETE"
    condition {
      older_than = "2592000s"
    }
  }

  depends_on = [google_project_service.api]
}
