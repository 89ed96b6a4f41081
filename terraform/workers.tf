# One Cloud Run worker pool per tier: pull consumers with no URL and no request scaling. The
# instance count belongs to the autoscaler (autoscaler.tf) or to the operator, never to
# Terraform, so `terraform apply` never starts or stops workers behind the scaler's back.
# Created instance counts default to 0: an idle fleet costs nothing.

resource "google_cloud_run_v2_worker_pool" "tier" {
  for_each            = local.deploy_workers ? local.tiers : {}
  name                = each.value.pool
  location            = var.region
  deletion_protection = false
  description         = "dvid2ng workers, tier ${each.key} (${each.value.memory_gib} GiB, ${each.value.vcpu} vCPU)"

  scaling {
    scaling_mode          = "MANUAL"
    manual_instance_count = lookup(var.instance_counts, each.key, 0)
  }

  template {
    service_account = local.worker_emails[each.key]

    containers {
      image = var.image

      resources {
        limits = {
          cpu    = tostring(each.value.vcpu)
          memory = "${each.value.memory_gib}Gi"
        }
      }

      # The exact environment `dvid2ng worker` reads (names from fleet.json "env").
      env {
        name  = local.env.queue
        value = local.queue_url
      }
      env {
        name  = local.env.state
        value = local.state_url
      }
      env {
        name  = local.env.tier
        value = each.key
      }
      env {
        name  = local.env.memory_budget_bytes
        value = tostring(each.value.memory_bytes)
      }
      env {
        name  = local.env.threads
        value = tostring(each.value.vcpu)
      }
      env {
        name  = local.env.log_format
        value = "json"
      }
    }
  }

  lifecycle {
    precondition {
      condition     = alltrue([for k in keys(var.instance_counts) : contains(keys(local.tiers), k)])
      error_message = "instance_counts names a tier fleet.json does not have; tiers: ${join(", ", keys(local.tiers))}."
    }
    ignore_changes = [
      scaling[0].manual_instance_count,
      client,
      client_version,
    ]
  }

  depends_on = [
    google_service_account.worker,
    google_project_iam_member.worker_uses_state,
    google_pubsub_subscription_iam_member.worker_pulls_own_tier,
    google_storage_bucket_iam_member.worker_writes_destination,
  ]
}
