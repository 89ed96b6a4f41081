# Run and shard state: one document per shard, transitions in transactions, progress from
# count()/sum() aggregations. Indexes and exemptions come from fleet.json (see its $comment).

resource "google_firestore_database" "state" {
  name        = local.database
  location_id = var.region
  type        = "FIRESTORE_NATIVE"

  concurrency_mode                  = "PESSIMISTIC"
  app_engine_integration_mode       = "DISABLED"
  point_in_time_recovery_enablement = "POINT_IN_TIME_RECOVERY_DISABLED"
  # The state is rebuilt by `dvid2ng publish --only-missing` and checked by `dvid2ng verify`
  # against the volume itself, so tearing the fleet down may delete it.
  delete_protection_state = "DELETE_PROTECTION_DISABLED"
  deletion_policy         = "DELETE"

  depends_on = [google_project_service.api]
}

locals {
  # Keyed like dvid2ng.schemas.fleet.CompositeIndex.key: collection:scope:field:mode,...
  firestore_indexes = {
    for ix in local.fleet.firestore.indexes :
    "${ix.collection}:${lookup(ix, "query_scope", "COLLECTION")}:${join(",", [for f in ix.fields : "${f.field_path}:${lookup(f, "order", lookup(f, "array_config", ""))}"])}" => ix
  }
  firestore_exemptions = {
    for e in local.fleet.firestore.single_field_exemptions : "${e.collection}:${e.field}" => e
  }
}

resource "google_firestore_index" "query" {
  for_each    = local.firestore_indexes
  database    = google_firestore_database.state.name
  collection  = each.value.collection
  query_scope = lookup(each.value, "query_scope", "COLLECTION")

  dynamic "fields" {
    for_each = each.value.fields
    content {
      field_path   = fields.value.field_path
      order        = lookup(fields.value, "order", null)
      array_config = lookup(fields.value, "array_config", null)
    }
  }
}

# Heartbeats are timestamps rewritten every 30 s by every worker: an automatic index on them
# would be a write hot spot, and no query filters or sorts on them alone.
resource "google_firestore_field" "exempt" {
  for_each   = local.firestore_exemptions
  database   = google_firestore_database.state.name
  collection = each.value.collection
  field      = each.value.field

  # An empty index_config disables every automatic single-field index on the field.
  index_config {}
}
