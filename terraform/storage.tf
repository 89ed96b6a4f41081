# Buckets, after the predecessor's $63K month (formats.md §16.3): single region equal to the
# compute region (no replication fee per byte written), soft delete off where objects are
# rewritten (no billed copies of every overwrite), source and destination apart, no public
# access, IAM only (uniform bucket-level access).

resource "google_storage_bucket" "source" {
  # checkov:skip=CKV_GCP_62:Only the fleet's own service accounts can read it (IAM only, public access prevented); usage logs would need a third bucket (itself unlogged) and write a log line per range read. Enable Data Access audit logs for storage on the project if an audit trail is required.
  # checkov:skip=CKV_GCP_78:The export is written once; soft delete (source_soft_delete_seconds, 7 days by default) already recovers a deleted or overwritten object, and versioning would keep every re-export's 4 TB forever.
  count    = var.create_source_bucket ? 1 : 0
  name     = local.source_bucket
  location = upper(var.region)

  storage_class               = "STANDARD"
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = false

  soft_delete_policy {
    retention_duration_seconds = var.source_soft_delete_seconds
  }

  versioning {
    enabled = false
  }

  depends_on = [google_project_service.api]
}

resource "google_storage_bucket" "destination" {
  # checkov:skip=CKV_GCP_62:Only the fleet's service accounts and operators reach it (IAM only, public access prevented); usage logs would need a third bucket and log every shard upload and viewer read. Enable Data Access audit logs for storage on the project if an audit trail is required.
  # checkov:skip=CKV_GCP_78:Versioning must stay off here: hierarchical namespace buckets do not allow it, and keeping every replaced shard file is exactly the predecessor's 3.1 PiB / $63K failure (formats.md 16.3). The volume is reproducible from the export.
  count    = var.create_destination_bucket ? 1 : 0
  name     = local.destination_bucket
  location = upper(var.region)

  storage_class               = "STANDARD"
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = false

  # Real folders: fast listing of s0/ ... for `dvid2ng verify`, atomic folder renames.
  hierarchical_namespace {
    enabled = true
  }

  # A rerun replaces shard files; with soft delete every replaced file stays billed for 7 days.
  soft_delete_policy {
    retention_duration_seconds = 0
  }

  versioning {
    enabled = false
  }

  depends_on = [google_project_service.api]
}

# Existing buckets must follow the same rules; plan stops with the reason otherwise.
data "google_storage_bucket" "existing_source" {
  count = var.create_source_bucket ? 0 : 1
  name  = local.source_bucket

  lifecycle {
    postcondition {
      condition     = upper(self.location) == upper(var.region)
      error_message = "source_bucket is in ${self.location}, not in region ${var.region}: reading it from the fleet would pay cross-region transfer on every byte."
    }
    postcondition {
      condition     = self.uniform_bucket_level_access
      error_message = "source_bucket must have uniform bucket-level access (the fleet's grants are IAM only)."
    }
  }
}

data "google_storage_bucket" "existing_destination" {
  count = var.create_destination_bucket ? 0 : 1
  name  = local.destination_bucket

  lifecycle {
    postcondition {
      condition     = upper(self.location) == upper(var.region)
      error_message = "destination_bucket is in ${self.location}, not in region ${var.region}: never write the volume into another region or a multi-region (replication fees, formats.md §16.3)."
    }
    postcondition {
      condition     = self.uniform_bucket_level_access
      error_message = "destination_bucket must have uniform bucket-level access (the fleet's grants are IAM only, some with conditions)."
    }
    postcondition {
      condition     = alltrue([for p in self.soft_delete_policy : p.retention_duration_seconds == 0])
      error_message = "destination_bucket has soft delete on: every rewritten shard file would stay billed. Run: gcloud storage buckets update gs://${local.destination_bucket} --clear-soft-delete"
    }
  }
}
