# Service accounts and their grants, least privilege. Every grant is on a single resource (topic,
# subscription, bucket, worker pool) or, where Google offers no resource-level grant, on the
# project with an IAM condition; no primitive roles, no allUsers / allAuthenticatedUsers.
# tests/infra/test_terraform.py lists the roles each account gets and compares them to an
# allowed set.

# Principals as literal strings built from the account ids (rather than resource attributes, which
# are unknown until apply), so tests can check every grant statically. Each grant names the
# account resource in depends_on.
locals {
  dispatcher_account = "${var.name_prefix}-dispatcher"
  scaler_account     = "${var.name_prefix}-scaler"
  dispatcher_email   = "${local.dispatcher_account}@${var.project}.iam.gserviceaccount.com"
  scaler_email       = "${local.scaler_account}@${var.project}.iam.gserviceaccount.com"
  worker_emails      = { for k, t in local.tiers : k => "${t.worker_account}@${var.project}.iam.gserviceaccount.com" }
  dispatcher_member  = "serviceAccount:${local.dispatcher_email}"
  scaler_member      = "serviceAccount:${local.scaler_email}"
  worker_members     = { for k, e in local.worker_emails : k => "serviceAccount:${e}" }
}

resource "google_service_account" "dispatcher" {
  account_id   = local.dispatcher_account
  display_name = "dvid2ng dispatcher (publish, status, errors, dlq, verify)"

  depends_on = [google_project_service.api]
}

resource "google_service_account" "worker" {
  for_each     = local.tiers
  account_id   = each.value.worker_account
  display_name = "dvid2ng worker, tier ${each.key}"

  depends_on = [google_project_service.api]
}

# Operators run the dispatcher commands as the dispatcher account (impersonation), never with
# their own broad roles.
resource "google_service_account_iam_member" "operator_impersonates_dispatcher" {
  for_each           = toset(var.operators)
  service_account_id = "projects/${var.project}/serviceAccounts/${local.dispatcher_email}"
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = each.key

  depends_on = [google_service_account.dispatcher]
}

# --- dispatcher -------------------------------------------------------------------------------

# `publish` and `dlq replay` publish shard messages to the tier topics.
resource "google_pubsub_topic_iam_member" "dispatcher_publishes" {
  for_each = local.tiers
  topic    = google_pubsub_topic.tier[each.key].name
  role     = "roles/pubsub.publisher"
  member   = local.dispatcher_member

  depends_on = [google_service_account.dispatcher]
}

# `queues check` compares the topics and subscriptions with the code's tier table.
resource "google_pubsub_topic_iam_member" "dispatcher_views_topics" {
  # key: tier, or "terminal"
  for_each = merge({ for k, t in local.tiers : k => k }, { terminal = "" })
  topic    = each.value == "" ? google_pubsub_topic.terminal.name : google_pubsub_topic.tier[each.value].name
  role     = "roles/pubsub.viewer"
  member   = local.dispatcher_member

  depends_on = [google_service_account.dispatcher]
}

resource "google_pubsub_subscription_iam_member" "dispatcher_views_subscriptions" {
  for_each     = local.tiers
  subscription = google_pubsub_subscription.tier[each.key].name
  role         = "roles/pubsub.viewer"
  member       = local.dispatcher_member

  depends_on = [google_service_account.dispatcher]
}

# `dlq list/show/replay` pull (and ack after replay) the terminal subscription.
resource "google_pubsub_subscription_iam_member" "dispatcher_reads_dead_letters" {
  subscription = google_pubsub_subscription.terminal.name
  role         = "roles/pubsub.subscriber"
  member       = local.dispatcher_member

  depends_on = [google_service_account.dispatcher]
}

# `publish` lists the export and reads the CSV indexes.
resource "google_storage_bucket_iam_member" "dispatcher_reads_source" {
  bucket = local.source_bucket
  role   = "roles/storage.objectViewer"
  member = local.dispatcher_member

  depends_on = [google_service_account.dispatcher, google_storage_bucket.source]
}

# `publish` compares an existing info, `--only-missing` and `verify` list the shard files.
resource "google_storage_bucket_iam_member" "dispatcher_reads_destination" {
  bucket = local.destination_bucket
  role   = "roles/storage.objectViewer"
  member = local.dispatcher_member

  depends_on = [google_service_account.dispatcher, google_storage_bucket.destination]
}

# `publish` writes the volume's info file, and nothing else: create only (no overwrite, no
# delete), and only objects named .../info.
resource "google_storage_bucket_iam_member" "dispatcher_writes_info" {
  bucket = local.destination_bucket
  role   = "roles/storage.objectCreator"
  member = local.dispatcher_member

  condition {
    title       = "info-files-only"
    description = "Only the neuroglancer info file of a volume"
    expression  = "resource.name.endsWith(\"/info\")"
  }

  depends_on = [google_service_account.dispatcher, google_storage_bucket.destination]
}

# Firestore has no per-database grant resource: project-level, conditioned on the database.
resource "google_project_iam_member" "dispatcher_uses_state" {
  project = var.project
  role    = "roles/datastore.user"
  member  = local.dispatcher_member

  condition {
    title       = "fleet-database-only"
    description = "Only the dvid2ng state database"
    expression  = local.firestore_condition
  }

  depends_on = [google_service_account.dispatcher]
}

# --- workers (one account per tier) -------------------------------------------------------------

resource "google_pubsub_subscription_iam_member" "worker_pulls_own_tier" {
  for_each     = local.tiers
  subscription = google_pubsub_subscription.tier[each.key].name
  role         = "roles/pubsub.subscriber"
  member       = local.worker_members[each.key]

  depends_on = [google_service_account.worker]
}

# A worker forwards a shard whose earlier attempt died to the next tier (the last tier to the
# terminal topic), and corrupt input straight to the terminal topic.
locals {
  # "<tier>:next" and "<tier>:terminal" => { tier, target tier ("" = terminal topic) }
  worker_publish_targets = merge(
    { for k, t in local.tiers : "${k}:next" => { tier = k, target = t.next } if t.next != "" },
    { for k, t in local.tiers : "${k}:terminal" => { tier = k, target = "" } },
  )
}

resource "google_pubsub_topic_iam_member" "worker_forwards" {
  for_each = local.worker_publish_targets
  topic    = each.value.target == "" ? google_pubsub_topic.terminal.name : google_pubsub_topic.tier[each.value.target].name
  role     = "roles/pubsub.publisher"
  member   = local.worker_members[each.value.tier]

  depends_on = [google_service_account.worker]
}

resource "google_storage_bucket_iam_member" "worker_reads_source" {
  for_each = local.tiers
  bucket   = local.source_bucket
  role     = "roles/storage.objectViewer"
  member   = local.worker_members[each.key]

  depends_on = [google_service_account.worker, google_storage_bucket.source]
}

# objectUser, not objectCreator: a worker reads info and the existing shard file through
# TensorStore, and deletes a stale shard file (left by an interrupted run) before it commits
# the replacement; object create/get/list/delete on this bucket, no IAM or bucket settings.
resource "google_storage_bucket_iam_member" "worker_writes_destination" {
  for_each = local.tiers
  bucket   = local.destination_bucket
  role     = "roles/storage.objectUser"
  member   = local.worker_members[each.key]

  depends_on = [google_service_account.worker, google_storage_bucket.destination]
}

resource "google_project_iam_member" "worker_uses_state" {
  for_each = local.tiers
  project  = var.project
  role     = "roles/datastore.user"
  member   = local.worker_members[each.key]

  condition {
    title       = "fleet-database-only"
    description = "Only the dvid2ng state database"
    expression  = local.firestore_condition
  }

  depends_on = [google_service_account.worker]
}
