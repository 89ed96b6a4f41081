locals {
  # The names this configuration shares with the Python code come from one file, which
  # dvid2ng.schemas.fleet reads too; tests/infra/ check that both sides agree.
  fleet = jsondecode(file("${path.module}/../schemas/json/fleet.json"))

  # Tier table in escalation order. `next` is "" (not null) for the last tier: tfparse, which
  # the tests use, cannot expand a for_each whose values hold null.
  tiers = {
    for i, t in local.fleet.tiers : t.name => {
      name                  = t.name
      index                 = i
      memory_gib            = t.memory_gib
      memory_bytes          = t.memory_gib * 1073741824
      vcpu                  = t.vcpu
      max_delivery_attempts = t.max_delivery_attempts
      next                  = i + 1 < length(local.fleet.tiers) ? local.fleet.tiers[i + 1].name : ""
      topic                 = replace(replace(local.fleet.pubsub.topic, "{prefix}", var.name_prefix), "{tier}", t.name)
      subscription          = replace(replace(local.fleet.pubsub.subscription, "{prefix}", var.name_prefix), "{tier}", t.name)
      pool                  = "${var.name_prefix}-${t.name}"
      worker_account        = "${var.name_prefix}-w-${t.name}"
    }
  }
  terminal_topic        = replace(local.fleet.pubsub.terminal_topic, "{prefix}", var.name_prefix)
  terminal_subscription = replace(local.fleet.pubsub.terminal_subscription, "{prefix}", var.name_prefix)

  database  = coalesce(var.firestore_database, var.name_prefix)
  queue_url = "pubsub://${var.project}/${var.name_prefix}"
  state_url = "firestore://${var.project}/${local.database}"
  env       = local.fleet.env

  source_bucket      = var.source_bucket
  destination_bucket = var.destination_bucket

  deploy_workers    = var.image != null
  deploy_autoscaler = local.deploy_workers && var.enable_autoscaler

  # Firestore grants are limited to the fleet's database by an IAM condition.
  firestore_condition = "resource.name == \"projects/${var.project}/databases/${local.database}\""
}
