"""`dvid2ng view` in a real browser: Debian's Chromium (headless, SwiftShader WebGL) loads the
Neuroglancer client and a sharded volume from the server, and what it draws is the volume.

At one screen pixel per voxel and with fixed segment colours, the pixels of two segments must
overlap the true cross-section (from the export's source labels, not from our output) with an
intersection over union of at least 0.98; an all-zero volume draws none of them; the shards
are read by Range requests; the console has no errors beyond CONSOLE_ALLOW (tests/browser.py).
"""

from __future__ import annotations

import os
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest

from dvid2ng.dispatcher.cli import main
from dvid2ng.dispatcher.embedded import run_embedded
from dvid2ng.dispatcher.ngstate import state_from_url, state_url
from dvid2ng.dispatcher.plan import plan_transcode
from tests import browser
from tests.exports import make_export

pytestmark = pytest.mark.timeout(600)

# Two scales, several shards per scale; the xy extent fits an 800x600 window at 1 px/voxel.
SPEC = {
    "type": "segmentation",
    "data_type": "uint64",
    "num_channels": 1,
    "scales": [
        {
            "key": "s0",
            "size": [256, 192, 64],
            "resolution": [8, 8, 8],
            "chunk_sizes": [[64, 64, 64]],
            "encoding": "compressed_segmentation",
            "sharding": {
                "@type": "neuroglancer_uint64_sharded_v1",
                "hash": "identity",
                "preshift_bits": 1,
                "minishard_bits": 1,
                "shard_bits": 2,
            },
        },
        {
            "key": "s1",
            "size": [128, 96, 32],
            "resolution": [16, 16, 16],
            "chunk_sizes": [[64, 64, 64]],
            "encoding": "compressed_segmentation",
            "sharding": {
                "@type": "neuroglancer_uint64_sharded_v1",
                "hash": "identity",
                "preshift_bits": 0,
                "minishard_bits": 2,
                "shard_bits": 0,
            },
        },
    ],
}
# Colours no part of Neuroglancer's own interface draws in a panel (its axis labels are red,
# green and blue).
COLOURS = {"#ff00ff": (255, 0, 255), "#00ffff": (0, 255, 255)}
MIN_IOU = 0.98


@pytest.fixture(scope="module")
def chromium(tmp_path_factory):
    """Skips (with the reason) only where Chromium is not installed or cannot start."""
    reason = browser.chromium_unavailable()
    if reason:
        pytest.skip(reason)
    try:
        with browser.chromium_page(tmp_path_factory.mktemp("probe-profile")) as page:
            page.page.set_content("<p>ok</p>")
    except Exception as e:  # the binary is there but cannot run here
        pytest.skip(f"Chromium at {browser.CHROMIUM} cannot be launched: {e}")


def _convert(root, export) -> str:
    dest = root / "vol"
    args = ["run", str(export.source), str(dest), "--spec", str(export.spec_path)]
    assert main([*args, "--workers", "2", "--no-progress"]) == 0
    return str(dest)


@pytest.fixture(scope="module")
def volume(tmp_path_factory):
    root = tmp_path_factory.mktemp("view-volume")
    export = make_export(root, seed=11, spec_json=SPEC)
    return _convert(root, export), export.bodies


@pytest.fixture(scope="module")
def gcs_volume(tmp_path_factory, volume):
    """The same volume converted into the GCS emulator, for `dvid2ng view gs://...`."""
    from tests.gcs_emulator import GcsEmulator

    root = tmp_path_factory.mktemp("view-gcs")
    emu = GcsEmulator(root)
    saved = dict(os.environ)
    try:
        emu.create_bucket("bucket")
        os.environ.update(emu.env())  # the conversion's workers inherit it
        export = make_export(root, seed=11, spec_json=SPEC)
        dest = "gs://bucket/vol"
        plan = plan_transcode(export.source, dest, export.spec)
        # run state beside the test, not in ~/.cache/dvid2ng (the default for a gs:// DEST)
        assert run_embedded(plan, workers=2, state_dir=root / "state").exit_code == 0
        os.environ.clear()
        os.environ.update(saved)
        yield dest, emu.env()
    finally:
        os.environ.clear()
        os.environ.update(saved)
        emu.stop()


@pytest.fixture(scope="module")
def blank_volume(tmp_path_factory):
    """Every scale exported as one file of all-background blocks (what DVID wrote before it
    skipped zero blocks): converted, recorded empty, no shard file at all."""
    from dvid2ng.dvidexport.writer import write_export_file

    root = tmp_path_factory.mktemp("view-blank")
    export = make_export(root, seed=11, spec_json=SPEC)  # for its spec file
    shutil.rmtree(export.source)
    solid_zero = (8).to_bytes(4, "little") * 3 + (1).to_bytes(4, "little") + bytes(8)
    zero = np.zeros(1, np.uint64)
    for s in export.bodies:
        folder = export.source / f"s{s}"
        folder.mkdir(parents=True)
        records = [(0, 0, 0, zero, zero, solid_zero)]
        write_export_file(folder / "0_0_0.arrow", folder / "0_0_0.csv", records)
    return _convert(root, export)


def _two_segments(section: np.ndarray) -> tuple[int, int]:
    """The two largest segments of the section, one of them with an id above 2^53 if there is
    one (Neuroglancer must keep uint64 ids exact, as strings)."""
    ids, counts = np.unique(section[section != 0], return_counts=True)
    order = np.argsort(counts)[::-1]
    big = [int(ids[i]) for i in order if ids[i] >= 2**53]
    first = big[0] if big else int(ids[order[0]])
    second = next(int(ids[i]) for i in order if ids[i] != first)
    return first, second


def _pixel_exact_state(printed: dict, box, segments, zoom: float, section_z: int) -> dict:
    """The printed state, drawn so that a screenshot can be compared with the volume: one xy
    panel, fixed opaque colours, nothing drawn over the data, and the panel's pixel centres on
    voxel centres (a position exactly between two voxels would be ambiguous)."""
    state = dict(printed)
    layer = dict(state["layers"][0])
    first, second = segments
    layer.update(
        segmentColors=dict(zip((str(first), str(second)), COLOURS, strict=True)),
        selectedAlpha=1.0,
        notSelectedAlpha=0.0,
        hoverHighlight=False,
    )
    _, _, width, height = box
    x, y, _ = printed["position"]
    # pixel k's centre is at position + (k + 0.5 - size/2) * zoom; make that a voxel centre
    # of the drawn scale (voxels of `zoom` scale-0 units)
    position = [
        (np.floor(x / zoom) + (0.5 if width % 2 else 0.0)) * zoom,
        (np.floor(y / zoom) + (0.5 if height % 2 else 0.0)) * zoom,
        (section_z + 0.5) * zoom,
    ]
    state.update(
        layers=[layer],
        layout="xy",
        position=position,
        showAxisLines=False,
        showScaleBar=False,
        showDefaultAnnotations=False,
        crossSectionBackgroundColor="#000000",
    )
    return state


def _check_console(page: browser.Page, data_url: str) -> None:
    """The console was heard (the client logs its event stream connecting), the stream never
    dropped, and no error appeared beyond the allow-list."""
    texts = [c.text for c in page.console]
    assert "python state event source connected" in texts, texts
    assert "python state event source disconnected" not in texts
    allowed = browser.CONSOLE_ALLOW["missing data"]
    unexpected = [
        e for e in page.errors() if not (allowed in e.text and e.url.startswith(data_url + "/"))
    ]
    assert not unexpected
    print(f"console: {len(page.errors())} allow-listed errors, {len(page.console)} messages")


def _draw(tmp_path, dest, segments, scale, png_name, env=None):
    """Serve `dest`, open the printed URL, then draw the two segments at one screen pixel per
    voxel of `scale`; returns (image, panel box, position, printed state, request log, page,
    data URL)."""
    args = ["--segments", ",".join(map(str, segments)), "--scale", str(scale)]
    with browser.view_server(dest, *args, log_path=tmp_path / "view.log", env=env) as server:
        printed = state_from_url(server.url)
        base = server.url.split("#")[0]
        z = SPEC["scales"][scale]["size"][2] // 2
        zoom = 2.0**scale
        with browser.chromium_page(tmp_path / "profile") as page:
            browser.open_state(page, server.url)  # as printed
            # one xy panel first, to measure it; then the pixel-exact position for its size
            rough = _pixel_exact_state(printed, (0, 0, 0, 0), segments, zoom, z)
            browser.show_state(page, state_url(base, rough), rough)
            box = browser.panel_box(page)
            state = _pixel_exact_state(printed, box, segments, zoom, z)
            browser.show_state(page, state_url(base, state), state)
            assert browser.panel_box(page) == box
            image = browser.screenshot(page, tmp_path / png_name)
        data_url = printed["layers"][0]["source"].removeprefix("precomputed://")
        return image, box, state["position"], printed, server.requests(), page, data_url


@pytest.mark.parametrize(("where", "scale"), [("local", 0), ("local", 1), ("gs", 0)])
def test_cross_section_matches_the_volume(chromium, volume, request, tmp_path, where, scale):
    dest, bodies = volume
    env = None
    if where == "gs":  # served through TensorStore's gcs kvstore: Content-Range totals are `*`
        dest, env = request.getfixturevalue("gcs_volume")
    zoom = 2**scale
    z = SPEC["scales"][scale]["size"][2] // 2
    section = bodies[scale][z]  # (y, x) of the drawn scale
    segments = _two_segments(bodies[0][z * zoom])
    image, box, position, printed, requests, page, data_url = _draw(
        tmp_path, dest, segments, scale, f"cross-section-{where}-s{scale}.png", env
    )

    # the printed state: a segmentation layer from this server, centred, segments selected
    layer = printed["layers"][0]
    assert layer["type"] == "segmentation"
    assert layer["source"].startswith("precomputed://http://127.0.0.1:")
    assert layer["segments"] == [str(s) for s in segments]
    assert printed["position"] == [s // 2 + 0.5 for s in SPEC["scales"][0]["size"]]
    assert printed["crossSectionScale"] == zoom

    # what was drawn is the volume: one voxel of the scale per screen pixel
    section_position = [p / zoom for p in position]
    want = browser.expected_labels(image.shape, box, section_position, section)
    for segment, colour in zip(segments, COLOURS.values(), strict=True):
        drawn = browser.colour_mask(image, colour)
        truth = want == segment
        assert truth.sum() > 200, "the segment must be well visible in the section"
        overlap = browser.iou(drawn, truth)
        print(f"{where} scale {scale} segment {segment}: IoU {overlap:.4f} ({truth.sum()} px)")
        assert overlap >= MIN_IOU, (segment, overlap, drawn.sum(), truth.sum())

    # sharded data is read by byte ranges, of the drawn scale
    key = SPEC["scales"][scale]["key"]
    shard_reads = [r for r in requests if r["path"].endswith(".shard")]
    assert shard_reads, "no shard was read"
    assert all(r["status"] == 206 and r["range"].startswith("bytes=") for r in shard_reads)
    assert any(f"/{key}/" in r["path"] for r in shard_reads)
    _check_console(page, data_url)


def test_blank_volume_draws_no_segment_colour(chromium, volume, blank_volume, tmp_path):
    _, bodies = volume
    segments = _two_segments(bodies[0][SPEC["scales"][0]["size"][2] // 2])
    image, box, _, _, requests, page, data_url = _draw(
        tmp_path, blank_volume, segments, 0, "blank.png"
    )
    left, top, width, height = box
    panel = image[top : top + height, left : left + width]
    for colour in COLOURS.values():
        assert not browser.colour_mask(panel, colour).any()
    # it did look: the info was read, the missing shards answered 404 (read as empty)
    assert any(r["path"].endswith("/info") and r["status"] == 200 for r in requests)
    assert any(r["path"].endswith(".shard") and r["status"] == 404 for r in requests)
    _check_console(page, data_url)


def test_demo_ends_with_a_view_that_shows_it(chromium, tmp_path, capsys):
    """The demo prints the view command; its URL, opened as printed, draws the demo volume's
    middle section in the xy panel, one colour per body. The screenshot is kept as an artifact
    (in the test's tmp dir, and in $DVID2NG_ARTIFACTS if that is set)."""
    from dvid2ng.dispatcher.demo import demo_volumes

    assert main(["demo", str(tmp_path / "demo"), "--workers", "2"]) == 0
    err = capsys.readouterr().err
    command = next(line.strip() for line in err.splitlines() if " view " in line)
    args = shlex.split(command)[2:]
    assert args == [str(tmp_path / "demo" / "volume")]
    with browser.view_server(*args, log_path=tmp_path / "view.log") as server:
        printed = state_from_url(server.url)
        with browser.chromium_page(tmp_path / "profile", width=1000, height=700) as page:
            browser.open_state(page, server.url)
            image = browser.screenshot(page, tmp_path / "view-demo.png")
            xy_panel = browser.panel_boxes(page)[0]
        data_url = printed["layers"][0]["source"].removeprefix("precomputed://")
        _check_console(page, data_url)
    if os.environ.get("DVID2NG_ARTIFACTS"):
        out = Path(os.environ["DVID2NG_ARTIFACTS"])
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy(tmp_path / "view-demo.png", out / "view-demo.png")
    print(f"demo screenshot: {tmp_path / 'view-demo.png'}")

    # no segments selected: every body of the section is drawn, each in its own colour
    _, _, bodies = demo_volumes()
    section = bodies[0][int(printed["position"][2])]
    _, counts = np.unique(section[section != 0], return_counts=True)
    bodies_seen = int((counts >= 50).sum())
    left, top, width, height = (int(v) for v in xy_panel)
    pixels = image[top : top + height, left : left + width].reshape(-1, 3)
    _, n = np.unique(pixels, axis=0, return_counts=True)
    colours_seen = int((n >= 50).sum()) - 1  # less the background
    print(f"demo section: {bodies_seen} bodies, {colours_seen} colours drawn")
    assert colours_seen >= 0.8 * bodies_seen
