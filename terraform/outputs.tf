output "env" {
  description = "The environment the dvid2ng CLI needs (publish, status, errors, dlq, queues check, verify). `eval \"$(terraform output -raw env_exports)\"` sets it."
  value = {
    (local.env.queue) = local.queue_url
    (local.env.state) = local.state_url
  }
}

output "env_exports" {
  description = "The same environment as shell export lines."
  value       = "export ${local.env.queue}=${local.queue_url}\nexport ${local.env.state}=${local.state_url}\n"
}

output "worker_env" {
  description = "The environment each tier's worker pool gives `dvid2ng worker` (tier => name => value)."
  value = {
    for k, t in local.tiers : k => {
      (local.env.queue)               = local.queue_url
      (local.env.state)               = local.state_url
      (local.env.tier)                = k
      (local.env.memory_budget_bytes) = tostring(t.memory_bytes)
      (local.env.threads)             = tostring(t.vcpu)
      (local.env.log_format)          = "json"
    }
  }
}

output "topics" {
  description = "Tier => topic name, in escalation order of fleet.json."
  value       = { for k, t in local.tiers : k => google_pubsub_topic.tier[k].name }
}

output "subscriptions" {
  description = "Tier => pull subscription name."
  value       = { for k, t in local.tiers : k => google_pubsub_subscription.tier[k].name }
}

output "terminal_topic" {
  value = google_pubsub_topic.terminal.name
}

output "terminal_subscription" {
  value = google_pubsub_subscription.terminal.name
}

output "service_accounts" {
  description = "Service account emails: the dispatcher (impersonate it to run dvid2ng publish/status/dlq/verify), one worker account per tier, the autoscaler."
  value = {
    dispatcher = google_service_account.dispatcher.email
    workers    = { for k, t in local.tiers : k => google_service_account.worker[k].email }
    scaler     = local.deploy_autoscaler ? google_service_account.scaler[0].email : null
  }
}

output "image_repository" {
  description = "Push the worker image here: IMAGE=<this>/dvid2ng:<tag>."
  value       = "${var.region}-docker.pkg.dev/${var.project}/${google_artifact_registry_repository.images.repository_id}"
}

output "worker_pools" {
  description = "Tier => Cloud Run worker pool name (empty until var.image is set)."
  value       = { for k, p in google_cloud_run_v2_worker_pool.tier : k => p.name }
}

output "buckets" {
  value = {
    source      = "gs://${local.source_bucket}"
    destination = "gs://${local.destination_bucket}"
  }
}

output "firestore_database" {
  value = google_firestore_database.state.name
}
