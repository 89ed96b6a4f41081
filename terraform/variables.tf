variable "project" {
  description = "Google Cloud project id that holds the whole fleet."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.project))
    error_message = "project must be a project id (6-30 lowercase letters, digits, hyphens), not a name or number."
  }
}

variable "region" {
  description = "The one region for compute, buckets, Firestore, Pub/Sub storage and the image registry, e.g. us-central1. Multi- and dual-regions (US, EU, nam5, ...) are refused: writing into them costs replication fees on every byte (formats.md §16.3)."
  type        = string

  validation {
    condition     = can(regex("^[a-z]+-[a-z]+[0-9]+$", var.region))
    error_message = "region must be a single region such as us-central1 or europe-west4, never a multi-region (US, EU, ASIA) or dual-region (nam4, eur4, ...)."
  }
}

variable "name_prefix" {
  description = "Prefix of every resource name; the PREFIX in DVID2NG_QUEUE=pubsub://PROJECT/PREFIX. 4-19 characters so every service account id stays within 30."
  type        = string
  default     = "dvid2ng"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{2,17}[a-z0-9]$", var.name_prefix))
    error_message = "name_prefix must be 4-19 lowercase letters, digits or hyphens, starting with a letter."
  }
}

variable "source_bucket" {
  description = "Bucket holding the DVID export (s0/, s1/, ... with .arrow and .csv)."
  type        = string
}

variable "create_source_bucket" {
  description = "true: create source_bucket here; false: use an existing bucket, which must be in var.region with uniform bucket-level access."
  type        = bool
  default     = true
}

variable "source_soft_delete_seconds" {
  description = "Soft-delete retention of a created source bucket. The export is written once and takes hours to regenerate, so it keeps Google's 7-day default; 0 turns it off."
  type        = number
  default     = 604800

  validation {
    condition     = var.source_soft_delete_seconds == 0 || (var.source_soft_delete_seconds >= 604800 && var.source_soft_delete_seconds <= 7776000)
    error_message = "source_soft_delete_seconds must be 0 or between 604800 (7 days) and 7776000 (90 days)."
  }
}

variable "destination_bucket" {
  description = "Bucket that receives the neuroglancer volume(s)."
  type        = string
}

variable "create_destination_bucket" {
  description = "true: create destination_bucket here (hierarchical namespace, soft delete off); false: use an existing bucket, which must be in var.region, have uniform bucket-level access and soft delete off."
  type        = bool
  default     = true
}

variable "firestore_database" {
  description = "Id of the Firestore (native) database for run and shard state; null: name_prefix. A named database keeps the fleet's state apart from anything in (default) and is deleted with it."
  type        = string
  default     = null

  validation {
    condition     = var.firestore_database == null || can(regex("^[a-z][a-z0-9-]{2,61}[a-z0-9]$", var.firestore_database))
    error_message = "firestore_database must be 4-63 lowercase letters, digits or hyphens, starting with a letter."
  }
}

variable "image" {
  description = "Worker image (Artifact Registry URL with a tag or digest), pushed after the first apply. null: create everything but the worker pools and the autoscaler (first apply of docs/deploy.md)."
  type        = string
  default     = null
}

variable "instance_counts" {
  description = "Instances per tier when a worker pool is created (tier name => count; missing tiers get 0). Later counts are set by the autoscaler or `gcloud run worker-pools update --instances`; Terraform ignores them."
  type        = map(number)
  default     = {}

  validation {
    condition     = alltrue([for n in values(var.instance_counts) : n >= 0 && floor(n) == n])
    error_message = "instance_counts must be whole numbers >= 0."
  }
}

variable "max_instances" {
  description = "Most instances the autoscaler starts per tier (tier name => count); missing tiers get default_max_instances."
  type        = map(number)
  default     = {}

  validation {
    condition     = alltrue([for n in values(var.max_instances) : n >= 0 && floor(n) == n])
    error_message = "max_instances must be whole numbers >= 0."
  }
}

variable "default_max_instances" {
  description = "Most instances the autoscaler starts in a tier not named in max_instances."
  type        = number
  default     = 100
}

variable "enable_autoscaler" {
  description = "Deploy CREMA (Google's Cloud Run External Metrics Autoscaler) to size each worker pool from its subscription's backlog, down to 0 when idle. false: set instance counts yourself."
  type        = bool
  default     = true
}

variable "autoscaler_image" {
  description = "CREMA image (Google's prebuilt release, see github.com/GoogleCloudPlatform/cloud-run-external-metrics-autoscaling)."
  type        = string
  default     = "us-central1-docker.pkg.dev/cloud-run-oss-images/crema-v1/autoscaler:1.2"
}

variable "autoscaler_base_image" {
  description = "Runtime base image for CREMA (its image is built FROM scratch for automatic base image updates)."
  type        = string
  default     = "us-central1-docker.pkg.dev/serverless-runtimes/google-24/runtimes/java25"
}

variable "autoscaler_schedule" {
  description = "Cloud Scheduler cron for CREMA's scaling passes (one POST each)."
  type        = string
  default     = "* * * * *"
}

variable "autoscaler_paused" {
  description = "Pause the scheduler job (no scaling passes, no cost) between runs."
  type        = bool
  default     = false
}

variable "operators" {
  description = "Principals (user:..., group:...) allowed to impersonate the dispatcher service account to run `dvid2ng publish/status/errors/dlq/verify`."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for m in var.operators : can(regex("^(user|group|serviceAccount):", m))])
    error_message = "operators must be IAM members like user:alice@example.org or group:team@example.org (never allUsers / allAuthenticatedUsers)."
  }
}

variable "labels" {
  description = "Extra labels on every resource that takes labels."
  type        = map(string)
  default     = {}
}
