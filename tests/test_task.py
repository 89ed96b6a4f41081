import json

import pytest

from dvid2ng.schemas.task import (
    SCHEMA_VERSION,
    ShardTask,
    SourceObject,
    TaskError,
    task_json_schema,
)
from tests.conftest import REPO_ROOT


def _task(**kw):
    base = dict(
        run_id="r1",
        scale=0,
        shard=25029,
        shard_name="061c5",
        kind="transcode",
        sources=(
            SourceObject(
                arrow="/x/s0/10240_40960_43008.arrow", csv="/x/s0/10240_40960_43008.csv", size=10
            ),
        ),
        dest="/out",
        tier="t2gi",
        chunks_expected=5,
    )
    base.update(kw)
    return ShardTask(**base)


def test_round_trip():
    t = _task()
    assert ShardTask.from_json(t.to_json()) == t
    assert t.key == "s0/061c5"
    assert len(t.to_json()) < 1000


def test_json_schema_file_is_generated_from_the_code():
    on_disk = json.loads((REPO_ROOT / "schemas/json/task.schema.json").read_text())
    assert on_disk == task_json_schema(), (
        "regenerate schemas/json/task.schema.json from task_json_schema()"
    )


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"\xff\xfe", "not JSON"),
        (b"[1,2]", "not a JSON object"),
        (b"{}", "missing"),
    ],
)
def test_poison_bodies(body, fragment):
    with pytest.raises(TaskError, match=fragment):
        ShardTask.from_json(body)


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("schema_version", SCHEMA_VERSION + 1, "schema_version"),
        ("shard_name", "061c6", "does not match"),
        ("kind", "other", "kind"),
        ("label_mode", "bodies", "label_mode"),
        ("z_compress", 2, "z_compress"),
        ("scale", "0", "must be integer"),
        ("bogus", 1, "unknown"),
    ],
)
def test_invalid_fields(field, value, fragment):
    data = json.loads(_task().to_json())
    data[field] = value
    with pytest.raises(TaskError, match=fragment):
        ShardTask.from_json(json.dumps(data))


def test_transcode_needs_one_source():
    with pytest.raises(TaskError, match="exactly 1 source"):
        _task(sources=()).to_json()


def test_downsample_task_round_trip_and_rules():
    from dvid2ng.kernels.downsample import DOWNSAMPLE_METHODS
    from dvid2ng.schemas.task import DOWNSAMPLE_METHODS as TASK_METHODS

    assert TASK_METHODS == DOWNSAMPLE_METHODS
    t = _task(scale=1, kind="downsample", sources=(), downsample_method="dvid")
    assert ShardTask.from_json(t.to_json()) == t
    with pytest.raises(TaskError, match="downsample_method"):
        _task(scale=1, kind="downsample", sources=()).validate()
    with pytest.raises(TaskError, match="scale 1 or higher"):
        _task(scale=0, kind="downsample", sources=(), downsample_method="mode").validate()
    with pytest.raises(TaskError, match="only for downsample"):
        _task(downsample_method="mode").validate()
