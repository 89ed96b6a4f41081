# One topic and one pull subscription per memory tier. A message that fails
# max_delivery_attempts times on a tier is forwarded by Pub/Sub to the next tier's topic; the
# last tier forwards to the terminal topic, which has its own subscription (dead letters sent to
# a topic without a subscription are lost). Workers also forward by themselves (publish, then
# ack) when the state shows the previous attempt died; the dead-letter policy is the backstop.

resource "google_pubsub_topic" "tier" {
  # checkov:skip=CKV_GCP_83:Messages carry shard coordinates and object paths, no volume data; Google-managed encryption at rest applies. A customer key would add a KMS key ring, its cost and a way to stop the whole fleet (key disabled or rotated away) for no protection the data needs.
  for_each = local.tiers
  name     = each.value.topic

  depends_on = [google_project_service.api]
}

resource "google_pubsub_topic" "terminal" {
  # checkov:skip=CKV_GCP_83:Dead letters are the same shard messages as the tier topics'; messages carry shard coordinates and object paths, no volume data; Google-managed encryption at rest applies. A customer key would add a KMS key ring, its cost and a way to stop the whole fleet (key disabled or rotated away) for no protection the data needs.
  name = local.terminal_topic

  depends_on = [google_project_service.api]
}

resource "google_pubsub_subscription" "tier" {
  for_each = local.tiers
  name     = each.value.subscription
  topic    = google_pubsub_topic.tier[each.key].id

  # Pub/Sub's maximum; the worker extends the lease itself while a long shard runs.
  ack_deadline_seconds       = local.fleet.pubsub.ack_deadline_seconds
  message_retention_duration = "${local.fleet.pubsub.message_retention_seconds}s"
  retain_acked_messages      = false

  retry_policy {
    minimum_backoff = "${local.fleet.pubsub.retry_min_backoff_seconds}s"
    maximum_backoff = "${local.fleet.pubsub.retry_max_backoff_seconds}s"
  }

  dead_letter_policy {
    dead_letter_topic     = each.value.next == "" ? google_pubsub_topic.terminal.id : google_pubsub_topic.tier[each.value.next].id
    max_delivery_attempts = each.value.max_delivery_attempts
  }

  # Never delete an idle subscription (the default expires it after 31 idle days, and with it
  # any shard still queued between runs).
  expiration_policy {
    ttl = ""
  }
}

resource "google_pubsub_subscription" "terminal" {
  name  = local.terminal_subscription
  topic = google_pubsub_topic.terminal.id

  # Dead letters wait here for `dvid2ng dlq list/replay`: keep them as long as Pub/Sub allows.
  ack_deadline_seconds       = local.fleet.pubsub.ack_deadline_seconds
  message_retention_duration = "${local.fleet.pubsub.terminal_message_retention_seconds}s"
  retain_acked_messages      = false

  expiration_policy {
    ttl = ""
  }
}

# Without these two grants the real service silently stops forwarding (the emulator has no IAM,
# so only tests/infra/test_terraform.py can catch a missing one).

# Publisher on every dead-letter topic: each tier subscription's forwarding target.
resource "google_pubsub_topic_iam_member" "agent_publishes_dead_letters" {
  for_each = local.tiers
  topic    = each.value.next == "" ? google_pubsub_topic.terminal.name : google_pubsub_topic.tier[each.value.next].name
  role     = "roles/pubsub.publisher"
  member   = local.pubsub_service_agent
}

# Subscriber on every subscription that has a dead-letter policy (to ack what it forwarded).
resource "google_pubsub_subscription_iam_member" "agent_acks_forwarded" {
  for_each     = local.tiers
  subscription = google_pubsub_subscription.tier[each.key].name
  role         = "roles/pubsub.subscriber"
  member       = local.pubsub_service_agent
}
