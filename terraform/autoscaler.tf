# Scaling from the Pub/Sub backlog, and to 0 when idle: CREMA (Cloud Run External Metrics
# Autoscaling, Google's published autoscaler for worker pools, built on KEDA scalers). Every
# minute Cloud Scheduler POSTs to the CREMA service; for each tier it reads the subscription's
# num_undelivered_messages (waiting + leased, so a busy worker counts) from Cloud Monitoring and
# sets the worker pool's manual instance count to ceil(backlog / 1 message), bounded by
# max_instances and by the rate limits below. No backlog: 0 instances, nothing billed but the
# scheduler's few seconds a minute. See docs/deploy.md "How the fleet scales".

locals {
  max_instances = { for k, t in local.tiers : k => lookup(var.max_instances, k, var.default_max_instances) }

  crema_config = {
    apiVersion = "crema/v1"
    kind       = "CremaConfig"
    spec = {
      triggerAuthentications = [
        # The CREMA service account's own credentials (Application Default Credentials).
        { metadata = { name = "service-account" }, spec = { podIdentity = { provider = "gcp" } } },
      ]
      scaledObjects = [
        for k, t in local.tiers : {
          spec = {
            scaleTargetRef  = { name = "projects/${var.project}/locations/${var.region}/workerpools/${t.pool}" }
            minReplicaCount = 0
            maxReplicaCount = local.max_instances[k]
            triggers = [
              {
                type              = "gcp-pubsub"
                name              = "backlog-${k}"
                authenticationRef = { name = "service-account" }
                metadata = {
                  subscriptionName = "projects/${var.project}/subscriptions/${t.subscription}"
                  mode             = "SubscriptionSize" # num_undelivered_messages
                  value            = "1"                # one shard message per instance
                  activationValue  = "0"
                  valueIfNull      = "0" # an idle subscription reports no time series
                }
              },
            ]
            advanced = {
              horizontalPodAutoscalerConfig = {
                behavior = {
                  # Start fast: 0 -> 1, then double or add 20 a minute, whichever is more.
                  scaleUp = {
                    stabilizationWindowSeconds = 0
                    selectPolicy               = "Max"
                    policies = [
                      { type = "Percent", value = 100, periodSeconds = 60 },
                      { type = "Pods", value = 20, periodSeconds = 60 },
                    ]
                  }
                  # Shrink slowly: an instance stopped mid-shard releases it (SIGTERM) and the
                  # shard is redone elsewhere, so avoid flapping on Monitoring's 2-3 min lag.
                  scaleDown = {
                    stabilizationWindowSeconds = 300
                    policies = [
                      { type = "Percent", value = 50, periodSeconds = 120 },
                    ]
                  }
                }
              }
            }
          }
        }
      ]
    }
  }
  crema_yaml = yamlencode(local.crema_config)
}

resource "google_service_account" "scaler" {
  count        = local.deploy_autoscaler ? 1 : 0
  account_id   = local.scaler_account
  display_name = "dvid2ng autoscaler (CREMA): sets worker pool instance counts"

  depends_on = [google_project_service.api]
}

# Set the instance count of each worker pool, and nothing else in Cloud Run.
resource "google_cloud_run_v2_worker_pool_iam_member" "scaler_sizes_pool" {
  for_each = local.deploy_autoscaler ? local.tiers : {}
  name     = google_cloud_run_v2_worker_pool.tier[each.key].name
  location = var.region
  role     = "roles/run.developer"
  member   = local.scaler_member

  depends_on = [google_service_account.scaler]
}

# Updating a worker pool acts as its service account.
resource "google_service_account_iam_member" "scaler_acts_as_worker" {
  for_each           = local.deploy_autoscaler ? local.tiers : {}
  service_account_id = "projects/${var.project}/serviceAccounts/${local.worker_emails[each.key]}"
  role               = "roles/iam.serviceAccountUser"
  member             = local.scaler_member

  depends_on = [google_service_account.scaler, google_service_account.worker]
}

# Read the subscriptions' backlog metrics. Cloud Monitoring grants exist only per project.
resource "google_project_iam_member" "scaler_reads_metrics" {
  count   = local.deploy_autoscaler ? 1 : 0
  project = var.project
  role    = "roles/monitoring.viewer"
  member  = local.scaler_member

  depends_on = [google_service_account.scaler]
}

# Read its configuration. The provider has no per-parameter grant resource, so this is on the
# project; the role reads parameters and nothing else.
resource "google_project_iam_member" "scaler_reads_config" {
  count   = local.deploy_autoscaler ? 1 : 0
  project = var.project
  role    = "roles/parametermanager.parameterViewer"
  member  = local.scaler_member

  depends_on = [google_service_account.scaler]
}

resource "google_parameter_manager_parameter" "autoscaler" {
  count        = local.deploy_autoscaler ? 1 : 0
  parameter_id = "${var.name_prefix}-autoscaler"
  format       = "YAML"

  depends_on = [google_project_service.api]
}

resource "google_parameter_manager_parameter_version" "autoscaler" {
  count     = local.deploy_autoscaler ? 1 : 0
  parameter = google_parameter_manager_parameter.autoscaler[0].id
  # A new version per configuration: CREMA is pointed at an exact version.
  parameter_version_id = "v-${substr(sha256(local.crema_yaml), 0, 16)}"
  parameter_data       = local.crema_yaml

  lifecycle {
    create_before_destroy = true
    precondition {
      condition     = alltrue([for k in keys(var.max_instances) : contains(keys(local.tiers), k)])
      error_message = "max_instances names a tier fleet.json does not have; tiers: ${join(", ", keys(local.tiers))}."
    }
  }
}

resource "google_cloud_run_v2_service" "autoscaler" {
  count               = local.deploy_autoscaler ? 1 : 0
  name                = "${var.name_prefix}-autoscaler"
  location            = var.region
  deletion_protection = false
  # Only Cloud Scheduler (same project) calls it, with an identity token.
  ingress = "INGRESS_TRAFFIC_INTERNAL_ONLY"

  template {
    service_account                  = local.scaler_email
    timeout                          = "120s"
    max_instance_request_concurrency = 1

    # One CREMA deployment per worker pool, one instance: it keeps its stabilization history
    # in memory. Request-based billing: charged only while a scaling pass runs.
    scaling {
      min_instance_count = 0
      max_instance_count = 1
    }

    containers {
      image          = var.autoscaler_image
      base_image_uri = var.autoscaler_base_image

      resources {
        limits = {
          cpu    = "1"
          memory = "1Gi"
        }
        cpu_idle          = true
        startup_cpu_boost = true
      }

      env {
        name  = "CREMA_CONFIG"
        value = google_parameter_manager_parameter_version.autoscaler[0].name
      }
      env {
        name  = "OUTPUT_SCALER_METRICS"
        value = "False"
      }
      env {
        name  = "ENABLE_CLOUD_LOGGING"
        value = "False"
      }
    }
  }

  depends_on = [
    google_service_account.scaler,
    google_project_iam_member.scaler_reads_config,
    google_project_iam_member.scaler_reads_metrics,
  ]
}

resource "google_cloud_run_v2_service_iam_member" "scheduler_invokes_autoscaler" {
  count    = local.deploy_autoscaler ? 1 : 0
  name     = google_cloud_run_v2_service.autoscaler[0].name
  location = var.region
  role     = "roles/run.invoker"
  member   = local.scaler_member

  depends_on = [google_service_account.scaler]
}

resource "google_cloud_scheduler_job" "autoscaler" {
  count            = local.deploy_autoscaler ? 1 : 0
  name             = "${var.name_prefix}-autoscaler"
  region           = var.region
  schedule         = var.autoscaler_schedule
  paused           = var.autoscaler_paused
  attempt_deadline = "120s"

  retry_config {
    retry_count = 0 # the next pass comes a minute later anyway
  }

  http_target {
    uri         = google_cloud_run_v2_service.autoscaler[0].uri
    http_method = "POST"

    oidc_token {
      service_account_email = local.scaler_email
      audience              = google_cloud_run_v2_service.autoscaler[0].uri
    }
  }

  depends_on = [google_project_service.api]
}
