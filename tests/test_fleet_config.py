"""The shared fleet configuration (schemas/json/fleet.json) is internally consistent."""

import pytest

from dvid2ng.schemas.fleet import (
    cloud_run_size_problem,
    fleet_config,
    subscription_name,
    terminal_topic_name,
    topic_name,
)
from dvid2ng.schemas.tiers import TIERS, next_tier


@pytest.mark.parametrize(
    ("gib", "vcpu", "ok"),
    [
        (2, 1, True),
        (4, 1, True),
        (8, 1, False),
        (8, 2, True),
        (16, 2, False),
        (16, 4, True),
        (24, 6, True),
        (32, 6, False),
        (32, 8, True),
        (64, 8, False),
        (4, 3, False),
    ],
)
def test_cloud_run_sizes(gib, vcpu, ok):
    assert (cloud_run_size_problem(gib, vcpu) is None) is ok


def test_every_tier_is_a_cloud_run_size_and_escalates_in_order():
    assert len(TIERS) >= 2
    for t in TIERS:
        assert cloud_run_size_problem(t.memory_gib, t.vcpu) is None
        assert 5 <= t.max_delivery_attempts <= 100  # Pub/Sub's dead-letter policy range
    assert [next_tier(t.name) for t in TIERS] == [t.name for t in TIERS[1:]] + [None]


def test_names_are_valid_pubsub_resource_names():
    import re

    # Pub/Sub: 3-255 chars, start with a letter, letters digits - _ . ~ + %
    valid = re.compile(r"[A-Za-z][A-Za-z0-9\-_.~+%]{2,254}")
    names = [terminal_topic_name("dvid2ng")]
    names += [
        f(p, t.name) for t in TIERS for f in (topic_name, subscription_name) for p in ["dvid2ng"]
    ]
    for n in names:
        assert valid.fullmatch(n), n
    assert len({topic_name("x", t.name) for t in TIERS}) == len(TIERS)
    assert terminal_topic_name("x") not in {topic_name("x", t.name) for t in TIERS}
    assert set(fleet_config()["env"].values()) >= {"DVID2NG_QUEUE", "DVID2NG_STATE"}
