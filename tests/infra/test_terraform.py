"""Static checks of terraform/ against the Python configuration (tfparse; no cloud, no plugin).

What the emulators cannot show is checked here: the dead-letter chain between tiers, the
grants the Pub/Sub service agent needs to forward (without them the real service silently
stops forwarding), least privilege, the bucket settings learned from the $63K incident, Cloud
Run sizes, and that every shared name equals dvid2ng.schemas.fleet's.
"""

from __future__ import annotations

import copy
import re

import pytest

from dvid2ng.schemas.fleet import (
    cloud_run_size_problem,
    env_name,
    fleet_config,
    subscription_name,
    terminal_subscription_name,
    terminal_topic_name,
    topic_name,
)
from dvid2ng.schemas.tiers import TIERS, next_tier, tier_names
from tests.infra.tfconfig import FULL_VARS, TERRAFORM, Config, load

PREFIX = "dvid2ng"
PROJECT = "dvid2ng-ci"
REGION = "us-central1"
SRC, DST = "dvid2ng-ci-export", "dvid2ng-ci-volumes"
DATABASE = PREFIX
PRIMITIVE_ROLES = {"roles/owner", "roles/editor", "roles/viewer"}
PUBLIC_MEMBERS = {"allUsers", "allAuthenticatedUsers"}


@pytest.fixture(scope="module")
def tf() -> Config:
    return load()


@pytest.fixture(scope="module")
def minimal() -> Config:
    """No image yet (the first apply of docs/deploy.md)."""
    lines = [ln for ln in FULL_VARS.read_text().splitlines() if not ln.startswith("image")]
    return load("\n".join(lines))


def sa_email(account: str) -> str:
    return f"{account}@{PROJECT}.iam.gserviceaccount.com"


def sa_member(account: str) -> str:
    return "serviceAccount:" + sa_email(account)


# --- names and the tier table -----------------------------------------------------------------


def test_terraform_reads_fleet_json_rather_than_copying_it():
    locals_tf = (TERRAFORM / "locals.tf").read_text()
    assert 'jsondecode(file("${path.module}/../schemas/json/fleet.json"))' in locals_tf
    everything = "".join(p.read_text() for p in TERRAFORM.glob("*.tf"))
    literals = set(re.findall(r'"([^"$]*)"', everything))  # every plain string literal
    for t in TIERS:  # no tier name or env name typed into the HCL as a value
        assert not any(t.name in lit for lit in literals), f"tier {t.name} is spelled out"
    for name in fleet_config()["env"].values():
        assert name not in literals, f"{name} is spelled out in terraform/"
    assert "{prefix}-{tier}" not in everything


def test_tiers_topics_and_subscriptions_equal_the_python_configuration(tf):
    topics = tf.instances("google_pubsub_topic", "tier")
    subs = tf.instances("google_pubsub_subscription", "tier")
    assert sorted(topics) == sorted(tier_names()) == sorted(subs)
    for t in TIERS:
        assert topics[t.name]["name"] == topic_name(PREFIX, t.name)
        assert subs[t.name]["name"] == subscription_name(PREFIX, t.name)
    assert tf.one("google_pubsub_topic.terminal")["name"] == terminal_topic_name(PREFIX)
    assert tf.one("google_pubsub_subscription.terminal")["name"] == terminal_subscription_name(
        PREFIX
    )
    tiers = tf.local("tiers")
    assert [tiers[n]["index"] for n in tier_names()] == list(range(len(TIERS)))
    assert {n: tiers[n]["next"] or None for n in tier_names()} == {
        n: next_tier(n) for n in tier_names()
    }


def test_worker_pools_have_the_tier_sizes_and_valid_cloud_run_pairs(tf):
    pools = tf.instances("google_cloud_run_v2_worker_pool", "tier")
    assert sorted(pools) == sorted(tier_names())
    for t in TIERS:
        pool = pools[t.name]
        assert pool["name"] == f"{PREFIX}-{t.name}"
        assert pool["location"] == REGION
        limits = pool["template"]["containers"]["resources"]["limits"]
        assert limits == {"cpu": str(t.vcpu), "memory": f"{t.memory_gib}Gi"}
        gib = int(re.fullmatch(r"(\d+)Gi", limits["memory"]).group(1))
        assert cloud_run_size_problem(gib, int(limits["cpu"])) is None
        assert pool["template"]["service_account"] == sa_email(f"{PREFIX}-w-{t.name}")
        assert pool["template"]["containers"]["image"] == tf.vars["image"]


def test_worker_env_is_exactly_what_dvid2ng_worker_reads(tf):
    pools = tf.instances("google_cloud_run_v2_worker_pool", "tier")
    for t in TIERS:
        env = {e["name"]: e["value"] for e in pools[t.name]["template"]["containers"]["env"]}
        assert env == {
            env_name("queue"): f"pubsub://{PROJECT}/{PREFIX}",
            env_name("state"): f"firestore://{PROJECT}/{DATABASE}",
            env_name("tier"): t.name,
            env_name("memory_budget_bytes"): str(t.memory_gib * 2**30),
            env_name("threads"): str(t.vcpu),
            env_name("log_format"): "json",
        }
        assert set(env) == set(fleet_config()["env"].values())
    worker_env = tf.output("worker_env")["value"]
    for t in TIERS:
        env = {e["name"]: e["value"] for e in pools[t.name]["template"]["containers"]["env"]}
        assert worker_env[t.name] == env


def test_outputs_give_the_cli_its_env_and_the_names(tf):
    assert tf.output("env")["value"] == {
        env_name("queue"): f"pubsub://{PROJECT}/{PREFIX}",
        env_name("state"): f"firestore://{PROJECT}/{DATABASE}",
    }
    exports = tf.output("env_exports")["value"]
    assert f"export {env_name('queue')}=pubsub://{PROJECT}/{PREFIX}\n" in exports
    assert f"export {env_name('state')}=firestore://{PROJECT}/{DATABASE}\n" in exports
    assert tf.output("topics")["value"] == {t.name: topic_name(PREFIX, t.name) for t in TIERS}
    assert tf.output("subscriptions")["value"] == {
        t.name: subscription_name(PREFIX, t.name) for t in TIERS
    }
    assert tf.output("terminal_topic")["value"] == terminal_topic_name(PREFIX)
    assert tf.output("terminal_subscription")["value"] == terminal_subscription_name(PREFIX)
    for name in ("service_accounts", "image_repository", "worker_pools", "buckets"):
        tf.output(name)


def test_instance_counts_start_at_zero_and_belong_to_the_scaler(tf):
    for pool in tf.instances("google_cloud_run_v2_worker_pool", "tier").values():
        assert pool["scaling"] == {**pool["scaling"], "scaling_mode": "MANUAL"}
        assert pool["scaling"]["manual_instance_count"] == 0
        assert pool["deletion_protection"] is False
    # tfparse does not render ignore_changes; read it from the source.
    workers_tf = (TERRAFORM / "workers.tf").read_text()
    block = re.search(r"ignore_changes\s*=\s*\[(.*?)\n\s*\]", workers_tf, re.S).group(1)
    assert "scaling[0].manual_instance_count" in block
    counts = load(FULL_VARS.read_text() + "\ninstance_counts = { t8gi = 3 }\n")
    pools = counts.instances("google_cloud_run_v2_worker_pool", "tier")
    assert pools["t8gi"]["scaling"]["manual_instance_count"] == 3
    assert pools["t2gi"]["scaling"]["manual_instance_count"] == 0


def test_per_tier_settings_must_name_real_tiers():
    bad = load(FULL_VARS.read_text() + "\ninstance_counts = { t3gi = 1 }\n")
    pool = bad.instances("google_cloud_run_v2_worker_pool", "tier")[TIERS[0].name]
    assert pool["lifecycle"]["precondition"]["condition"] is False
    assert "t3gi" not in pool["lifecycle"]["precondition"]["error_message"]  # lists the real ones
    assert TIERS[0].name in pool["lifecycle"]["precondition"]["error_message"]
    bad = load(FULL_VARS.read_text().replace("t32gi = 10", "t33gi = 10"))
    (version,) = bad.blocks("google_parameter_manager_parameter_version")
    assert version["lifecycle"]["precondition"]["condition"] is False


def test_without_an_image_nothing_runs_and_nothing_can_scale(minimal):
    assert minimal.instances("google_cloud_run_v2_worker_pool", "tier") == {}
    for kind in (
        "google_cloud_run_v2_service",
        "google_cloud_scheduler_job",
        "google_parameter_manager_parameter",
        "google_cloud_run_v2_worker_pool_iam_member",
    ):
        assert minimal.blocks(kind) == [], kind
    # ... but queues, state, buckets and the registry exist for the first push and publish.
    assert len(minimal.instances("google_pubsub_subscription", "tier")) == len(TIERS)
    assert minimal.blocks("google_artifact_registry_repository")
    assert minimal.blocks("google_firestore_database")


# --- Pub/Sub: the dead-letter chain and the service agent ---------------------------------------


def test_dead_letter_chain_climbs_every_tier_then_ends_in_the_terminal_topic(tf):
    topics = tf.instances("google_pubsub_topic", "tier")
    terminal = tf.one("google_pubsub_topic.terminal")
    subs = tf.instances("google_pubsub_subscription", "tier")
    topic_by_id = {b["id"]: b for b in [*topics.values(), terminal]}
    ps = fleet_config()["pubsub"]
    for t in TIERS:
        sub = subs[t.name]
        assert sub["topic"] == topics[t.name]["id"], f"{t.name} subscribes another tier's topic"
        dlp = sub["dead_letter_policy"]
        target = topic_by_id[dlp["dead_letter_topic"]]
        expected = topics[next_tier(t.name)] if next_tier(t.name) else terminal
        assert target is expected, f"{t.name} forwards to {target['name']}"
        assert dlp["max_delivery_attempts"] == t.max_delivery_attempts
        assert 5 <= dlp["max_delivery_attempts"] <= 100
        assert sub["ack_deadline_seconds"] == ps["ack_deadline_seconds"] <= 600
        assert sub["message_retention_duration"] == f"{ps['message_retention_seconds']}s"
        assert sub["retry_policy"]["minimum_backoff"] == f"{ps['retry_min_backoff_seconds']}s"
        assert sub["retry_policy"]["maximum_backoff"] == f"{ps['retry_max_backoff_seconds']}s"
        assert sub["expiration_policy"]["ttl"] == ""  # never expires between runs
    # Walk it: from the first tier every message ends in the terminal topic, no cycle.
    seen, topic = [], topics[TIERS[0].name]
    while topic is not terminal:
        seen.append(topic["name"])
        sub = next(s for s in subs.values() if s["topic"] == topic["id"])
        topic = topic_by_id[sub["dead_letter_policy"]["dead_letter_topic"]]
        assert len(seen) <= len(TIERS)
    assert seen == [topic_name(PREFIX, t.name) for t in TIERS]
    # Dead letters are kept: the terminal topic has a subscription, which forwards nowhere.
    assert 600 <= ps["message_retention_seconds"] <= ps["terminal_message_retention_seconds"]
    assert ps["terminal_message_retention_seconds"] <= 31 * 86400  # Pub/Sub's maximum
    term_sub = tf.one("google_pubsub_subscription.terminal")
    assert term_sub["topic"] == terminal["id"]
    assert "dead_letter_policy" not in term_sub
    assert term_sub["message_retention_duration"] == f"{ps['terminal_message_retention_seconds']}s"
    assert term_sub["expiration_policy"]["ttl"] == ""


def test_pubsub_service_agent_may_forward_from_every_subscription(tf):
    agent = tf.local("pubsub_service_agent")
    assert re.fullmatch(
        r"serviceAccount:service-\$\{data\.google_project\.this\.number\}"
        r"@gcp-sa-pubsub\.iam\.gserviceaccount\.com",
        agent,
    ), agent
    assert tf.one("data.google_project.this")["project_id"] == PROJECT

    def is_agent(member):
        return isinstance(member, dict) and member.get("__attribute__") == (
            "local.pubsub_service_agent"
        )

    topics = {b["id"]: b["name"] for b in tf.blocks("google_pubsub_topic")}
    publishers = {
        g["topic"]
        for g in tf.blocks("google_pubsub_topic_iam_member")
        if is_agent(g["member"]) and g["role"] == "roles/pubsub.publisher"
    }
    subscribers = {
        g["subscription"]
        for g in tf.blocks("google_pubsub_subscription_iam_member")
        if is_agent(g["member"]) and g["role"] == "roles/pubsub.subscriber"
    }
    with_policy = [s for s in tf.blocks("google_pubsub_subscription") if "dead_letter_policy" in s]
    assert len(with_policy) == len(TIERS)
    for sub in with_policy:
        dead_letter_topic = topics[sub["dead_letter_policy"]["dead_letter_topic"]]
        assert dead_letter_topic in publishers, f"agent cannot publish to {dead_letter_topic}"
        assert sub["name"] in subscribers, f"agent cannot ack on {sub['name']}"
    # and nothing more
    assert publishers == {topics[s["dead_letter_policy"]["dead_letter_topic"]] for s in with_policy}
    assert subscribers == {s["name"] for s in with_policy}


# --- IAM: least privilege -------------------------------------------------------------------------

GRANT_KINDS = {
    "google_pubsub_topic_iam_member": "topic",
    "google_pubsub_subscription_iam_member": "subscription",
    "google_storage_bucket_iam_member": "bucket",
    "google_project_iam_member": "project",
    "google_service_account_iam_member": "service_account_id",
    "google_cloud_run_v2_worker_pool_iam_member": "name",
    "google_cloud_run_v2_service_iam_member": "name",
}


def grants(tf: Config) -> set[tuple[str, str, str, str]]:
    """Every grant as (member, role, resource, condition expression or "")."""
    out = set()
    for kind, attr in GRANT_KINDS.items():
        for g in tf.blocks(kind):
            member = g["member"]
            if isinstance(member, dict):  # resolved only at apply: name its source instead
                member = member["__attribute__"]
            cond = (g.get("condition") or {}).get("expression", "")
            out.add((member, g["role"], f"{attr}:{g[attr]}", cond))
    return out


def expected_grants() -> set[tuple[str, str, str, str]]:
    """The allowed set: exactly what each identity needs (see terraform/iam.tf)."""
    db = f'resource.name == "projects/{PROJECT}/databases/{DATABASE}"'
    dispatcher = sa_member(f"{PREFIX}-dispatcher")
    scaler = sa_member(f"{PREFIX}-scaler")
    g = {
        (
            dispatcher,
            "roles/pubsub.subscriber",
            f"subscription:{terminal_subscription_name(PREFIX)}",
            "",
        ),
        (dispatcher, "roles/pubsub.viewer", f"topic:{terminal_topic_name(PREFIX)}", ""),
        (dispatcher, "roles/storage.objectViewer", f"bucket:{SRC}", ""),
        (dispatcher, "roles/storage.objectViewer", f"bucket:{DST}", ""),
        (
            dispatcher,
            "roles/storage.objectCreator",
            f"bucket:{DST}",
            'resource.name.endsWith("/info")',
        ),
        (dispatcher, "roles/datastore.user", f"project:{PROJECT}", db),
        (scaler, "roles/monitoring.viewer", f"project:{PROJECT}", ""),
        (scaler, "roles/parametermanager.parameterViewer", f"project:{PROJECT}", ""),
        (scaler, "roles/run.invoker", f"name:{PREFIX}-autoscaler", ""),
        (
            "user:operator@example.org",
            "roles/iam.serviceAccountTokenCreator",
            f"service_account_id:projects/{PROJECT}/serviceAccounts/{sa_email(PREFIX + '-dispatcher')}",
            "",
        ),
    }
    for t in TIERS:
        worker = sa_member(f"{PREFIX}-w-{t.name}")
        sub, topic = subscription_name(PREFIX, t.name), topic_name(PREFIX, t.name)
        forward_to = topic_name(PREFIX, next_tier(t.name)) if next_tier(t.name) else None
        g |= {
            (dispatcher, "roles/pubsub.publisher", f"topic:{topic}", ""),
            (dispatcher, "roles/pubsub.viewer", f"topic:{topic}", ""),
            (dispatcher, "roles/pubsub.viewer", f"subscription:{sub}", ""),
            (worker, "roles/pubsub.subscriber", f"subscription:{sub}", ""),
            (worker, "roles/pubsub.publisher", f"topic:{terminal_topic_name(PREFIX)}", ""),
            (worker, "roles/storage.objectViewer", f"bucket:{SRC}", ""),
            (worker, "roles/storage.objectUser", f"bucket:{DST}", ""),
            (worker, "roles/datastore.user", f"project:{PROJECT}", db),
            (scaler, "roles/run.developer", f"name:{PREFIX}-{t.name}", ""),
            (
                scaler,
                "roles/iam.serviceAccountUser",
                f"service_account_id:projects/{PROJECT}/serviceAccounts/{sa_email(PREFIX + '-w-' + t.name)}",
                "",
            ),
            ("local.pubsub_service_agent", "roles/pubsub.subscriber", f"subscription:{sub}", ""),
            (
                "local.pubsub_service_agent",
                "roles/pubsub.publisher",
                f"topic:{forward_to or terminal_topic_name(PREFIX)}",
                "",
            ),
        }
        if forward_to:
            g.add((worker, "roles/pubsub.publisher", f"topic:{forward_to}", ""))
    return g


def test_each_identity_gets_exactly_the_allowed_roles(tf):
    have, allowed = grants(tf), expected_grants()
    extra, missing = have - allowed, allowed - have
    assert not extra, "grants beyond least privilege:\n" + "\n".join(map(str, sorted(extra)))
    assert not missing, "grants the fleet needs but lacks:\n" + "\n".join(map(str, sorted(missing)))


def test_roles_per_service_account(tf):
    """The same grants, summarised per account as a reviewer reads them."""
    roles: dict[str, set[str]] = {}
    for member, role, _, _ in grants(tf):
        roles.setdefault(member, set()).add(role)
    assert roles[sa_member(f"{PREFIX}-dispatcher")] == {
        "roles/pubsub.publisher",
        "roles/pubsub.subscriber",
        "roles/pubsub.viewer",
        "roles/storage.objectViewer",
        "roles/storage.objectCreator",
        "roles/datastore.user",
    }
    for t in TIERS:
        assert roles[sa_member(f"{PREFIX}-w-{t.name}")] == {
            "roles/pubsub.subscriber",
            "roles/pubsub.publisher",
            "roles/storage.objectViewer",
            "roles/storage.objectUser",
            "roles/datastore.user",
        }
    assert roles[sa_member(f"{PREFIX}-scaler")] == {
        "roles/run.developer",
        "roles/run.invoker",
        "roles/iam.serviceAccountUser",
        "roles/monitoring.viewer",
        "roles/parametermanager.parameterViewer",
    }


def test_no_primitive_roles_no_public_members_no_authoritative_iam(tf):
    for member, role, resource, _ in grants(tf):
        assert role not in PRIMITIVE_ROLES, (member, role, resource)
        assert member not in PUBLIC_MEMBERS, (member, role, resource)
    for kind in tf.raw:  # bindings/policies would silently remove grants made outside
        assert not kind.endswith(("_iam_binding", "_iam_policy")), kind
    # Project-wide grants are conditioned to the fleet's database, except the two roles
    # Google only offers per project (metrics, parameters), both read-only.
    for member, role, _, cond in grants(tf):
        if role == "roles/datastore.user":
            assert cond, member


def test_every_granted_account_is_one_this_configuration_creates(tf):
    accounts = {b["account_id"] for b in tf.blocks("google_service_account")}
    assert accounts == {f"{PREFIX}-dispatcher", f"{PREFIX}-scaler"} | {
        f"{PREFIX}-w-{t.name}" for t in TIERS
    }
    assert all(6 <= len(a) <= 30 for a in accounts)
    created = {sa_member(a) for a in accounts}
    for member, *_ in grants(tf):
        if member.startswith("serviceAccount:"):
            assert member in created, member


def test_longest_allowed_prefix_keeps_account_ids_valid():
    text = FULL_VARS.read_text().replace('"dvid2ng"', '"abcdefghijklmnopqrs"')
    tf = load(text)
    assert tf.variable("name_prefix")["validation"]["condition"] is True
    assert all(len(b["account_id"]) <= 30 for b in tf.blocks("google_service_account"))
    too_long = load(text.replace('"abcdefghijklmnopqrs"', '"abcdefghijklmnopqrst"'))
    assert too_long.variable("name_prefix")["validation"]["condition"] is False


# --- buckets ----------------------------------------------------------------------------------------


def test_buckets_are_single_region_private_and_never_keep_overwrites(tf):
    src = tf.one("google_storage_bucket.source[0]")
    dst = tf.one("google_storage_bucket.destination[0]")
    for b, name in ((src, SRC), (dst, DST)):
        assert b["name"] == name
        assert b["location"] == REGION.upper()  # the compute region, not US/EU
        assert b["uniform_bucket_level_access"] is True
        assert b["public_access_prevention"] == "enforced"
        assert b["storage_class"] == "STANDARD"
        assert b["force_destroy"] is False
        assert b["versioning"]["enabled"] is False
    assert dst["hierarchical_namespace"]["enabled"] is True
    assert dst["soft_delete_policy"]["retention_duration_seconds"] == 0
    assert "hierarchical_namespace" not in src
    assert src["soft_delete_policy"]["retention_duration_seconds"] == 604800
    assert SRC != DST


@pytest.mark.parametrize(
    ("region", "ok"),
    [
        ("us-central1", True),
        ("europe-west4", True),
        ("asia-northeast1", True),
        ("US", False),
        ("us", False),
        ("EU", False),
        ("nam5", False),
        ("eur4", False),
        ("asia1", False),
        ("us-central1-a", False),
    ],
)
def test_region_must_be_a_single_region(region, ok):
    tf = load(FULL_VARS.read_text().replace(f'"{REGION}"', f'"{region}"'))
    assert tf.variable("region")["validation"]["condition"] is ok


def test_existing_buckets_are_checked_not_created():
    tf = load(
        FULL_VARS.read_text()
        + "\ncreate_source_bucket = false\ncreate_destination_bucket = false\n"
    )
    assert tf.blocks("google_storage_bucket") == []
    existing = {b["name"]: b for b in tf.blocks("google_storage_bucket", data=True)}
    assert set(existing) == {SRC, DST}
    # the region, uniform access and soft-delete rules hold for buckets made elsewhere too
    checks = {
        name: [p["error_message"] for p in b["lifecycle"]["postcondition"]]
        for name, b in existing.items()
    }
    assert any("not in region" in m for m in checks[SRC])
    assert any("uniform bucket-level access" in m for m in checks[SRC])
    assert any("not in region" in m for m in checks[DST])
    assert any("uniform bucket-level access" in m for m in checks[DST])
    assert any("soft delete on" in m for m in checks[DST])
    storage_tf = (TERRAFORM / "storage.tf").read_text()
    existing_dst = storage_tf[
        storage_tf.index('data "google_storage_bucket" "existing_destination"') :
    ]
    assert "upper(self.location) == upper(var.region)" in existing_dst
    assert "p.retention_duration_seconds == 0" in existing_dst
    # the grants still name the buckets
    buckets = {g["bucket"] for g in tf.blocks("google_storage_bucket_iam_member")}
    assert buckets == {SRC, DST}


# --- Firestore ------------------------------------------------------------------------------------


def test_firestore_is_native_in_the_region_with_heartbeat_exemptions(tf):
    db = tf.one("google_firestore_database.state")
    assert db["type"] == "FIRESTORE_NATIVE"
    assert db["location_id"] == REGION
    assert db["name"] == DATABASE
    exemptions = {(b["collection"], b["field"]): b for b in tf.blocks("google_firestore_field")}
    want = {
        (e["collection"], e["field"])
        for e in fleet_config()["firestore"]["single_field_exemptions"]
    }
    assert set(exemptions) == want
    assert ("shards", "heartbeat_at") in want
    for b in exemptions.values():
        assert b["database"] == DATABASE
        # an empty index_config = no automatic single-field index on the field
        assert {k for k in b["index_config"] if not k.startswith("__") and k != "id"} == set()


def test_composite_indexes_come_from_fleet_json_one_resource_each():
    from dvid2ng.schemas.fleet import CompositeIndex, IndexField

    fleet = copy.deepcopy(fleet_config())
    fleet["firestore"]["indexes"] = [
        {
            "collection": "shards",
            "query_scope": "COLLECTION",
            "fields": [
                {"field_path": "run", "order": "ASCENDING"},
                {"field_path": "status", "order": "ASCENDING"},
                {"field_path": "chunks", "order": "DESCENDING"},
            ],
        },
        {
            "collection": "shards",
            "query_scope": "COLLECTION_GROUP",
            "fields": [
                {"field_path": "labels", "array_config": "CONTAINS"},
                {"field_path": "scale", "order": "ASCENDING"},
            ],
        },
    ]
    tf = load(fleet=fleet)
    made = tf.instances("google_firestore_index", "query")
    want = {
        CompositeIndex(
            ix["collection"],
            tuple(
                IndexField(f["field_path"], f.get("order"), f.get("array_config"))
                for f in ix["fields"]
            ),
            ix["query_scope"],
        ).key: ix
        for ix in fleet["firestore"]["indexes"]
    }
    assert set(made) == set(want)  # the for_each key is CompositeIndex.key
    for key, ix in want.items():
        b = made[key]
        assert b["database"] == DATABASE
        assert b["collection"] == ix["collection"]
        assert b["query_scope"] == ix["query_scope"]
        fields = [
            {k: f[k] for k in ("field_path", "order", "array_config") if f.get(k)}
            for f in b["fields"]
        ]
        assert fields == ix["fields"]  # same fields, same order


# --- autoscaler -------------------------------------------------------------------------------------


def test_autoscaler_sizes_each_pool_from_its_own_subscription(tf):
    cfg = tf.local("crema_config")
    assert cfg["apiVersion"] == "crema/v1" and cfg["kind"] == "CremaConfig"
    auths = {a["metadata"]["name"] for a in cfg["spec"]["triggerAuthentications"]}
    assert "pollingInterval" not in cfg["spec"]  # invoked by Cloud Scheduler instead
    objects = cfg["spec"]["scaledObjects"]
    assert len(objects) == len(TIERS)
    by_target = {o["spec"]["scaleTargetRef"]["name"]: o["spec"] for o in objects}
    for t in TIERS:
        spec = by_target[f"projects/{PROJECT}/locations/{REGION}/workerpools/{PREFIX}-{t.name}"]
        assert spec["minReplicaCount"] == 0  # idle -> nothing billed
        assert spec["maxReplicaCount"] == (10 if t.name == "t32gi" else 100)
        (trigger,) = spec["triggers"]
        assert trigger["type"] == "gcp-pubsub"
        assert trigger["authenticationRef"]["name"] in auths
        meta = trigger["metadata"]
        assert meta["subscriptionName"] == (
            f"projects/{PROJECT}/subscriptions/{subscription_name(PREFIX, t.name)}"
        )
        assert meta["mode"] == "SubscriptionSize" and meta["value"] == "1"
        assert all(isinstance(v, str) for v in meta.values())  # KEDA metadata is map[string]string
        assert "pollingInterval" not in spec  # CREMA rejects it per object
    svc = tf.one("google_cloud_run_v2_service.autoscaler[0]")
    assert svc["ingress"] == "INGRESS_TRAFFIC_INTERNAL_ONLY"
    assert svc["template"]["service_account"] == sa_email(f"{PREFIX}-scaler")
    assert svc["template"]["scaling"]["max_instance_count"] == 1
    job = tf.one("google_cloud_scheduler_job.autoscaler[0]")
    assert job["http_target"]["http_method"] == "POST"
    assert job["http_target"]["oidc_token"]["service_account_email"] == sa_email(f"{PREFIX}-scaler")
    assert job["region"] == REGION


def test_autoscaler_can_be_left_out():
    tf = load(FULL_VARS.read_text() + "\nenable_autoscaler = false\n")
    assert len(tf.instances("google_cloud_run_v2_worker_pool", "tier")) == len(TIERS)
    assert tf.blocks("google_cloud_run_v2_service") == []
    assert not any(m == sa_member(f"{PREFIX}-scaler") for m, *_ in grants(tf))


def test_provider_pin_has_worker_pools_with_zero_instances():
    versions = (TERRAFORM / "versions.tf").read_text()
    m = re.search(r'source\s*=\s*"hashicorp/google".*?version\s*=\s*"([^"]+)"', versions, re.S)
    assert m, "provider hashicorp/google must be pinned"
    low = re.search(r">=\s*(\d+)\.(\d+)", m.group(1))
    high = re.search(r"<\s*(\d+)", m.group(1))
    assert low and high, f"pin a range, got {m.group(1)!r}"
    assert (int(low.group(1)), int(low.group(2))) >= (6, 47)  # manual_instance_count 0 fixed
    assert int(high.group(1)) <= int(low.group(1)) + 1  # never an unbounded major
