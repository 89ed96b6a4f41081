"""2x2x2 label downsampling: `mode` must equal TensorStore's `downsample(..., "mode")` exactly;
`dvid` must follow DVID's rule (0 does not vote unless all are 0; ties to the smallest label).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import tensorstore as ts
from hypothesis import given, settings
from hypothesis import strategies as st

from dvid2ng.dvidexport.synthetic import synthetic_volume
from dvid2ng.kernels import KernelError
from dvid2ng.kernels.downsample import downsample_labels, downsampled_shape
from tests.kernels._strategies import label_volumes
from tests.kernels.reference import downsample_reference, vote_reference

U64MAX = 2**64 - 1


def tensorstore_mode(vol: np.ndarray) -> np.ndarray:
    out = ts.downsample(ts.array(vol), [2, 2, 2], "mode").read().result()
    return np.asarray(out)


def window_volume(windows: np.ndarray) -> np.ndarray:
    """A (2, 2, 2N) volume whose N full windows hold the rows of `windows` (N, 8), voxel
    order z, y, x within a window."""
    w = windows.reshape(-1, 2, 2, 2)  # (n, z, y, x)
    return np.ascontiguousarray(w.transpose(1, 2, 0, 3).reshape(2, 2, -1))


def vectorized_votes(windows: np.ndarray, method: str) -> np.ndarray:
    """Independent reference over many full windows at once (numpy, no loops over windows)."""
    counts = (windows[:, :, None] == windows[:, None, :]).sum(axis=2)
    if method == "dvid":
        counts = np.where(windows == 0, 0, counts)
    top = counts.max(axis=1, keepdims=True)
    winner = np.where(counts == top, windows, np.uint64(U64MAX)).min(axis=1)
    return np.where(top[:, 0] == 0, np.uint64(0), winner)


ALPHABET = np.array([0, 1, 2**63, U64MAX], dtype=np.uint64)
ALL_WINDOWS = ALPHABET[np.array(list(itertools.product(range(4), repeat=8)))]  # 4^8 windows


@pytest.mark.parametrize("method", ["mode", "dvid"])
def test_every_window_over_four_labels(method):
    """All 65,536 windows over {0, 1, 2^63, 2^64-1}: every tie, majority and zero pattern."""
    got = downsample_labels(window_volume(ALL_WINDOWS), method).reshape(-1)
    np.testing.assert_array_equal(got, vectorized_votes(ALL_WINDOWS, method))
    rng = np.random.default_rng(0)
    for i in rng.choice(len(ALL_WINDOWS), size=300, replace=False):
        assert got[i] == vote_reference(ALL_WINDOWS[i], method)


def test_every_window_matches_tensorstore():
    vol = window_volume(ALL_WINDOWS)
    np.testing.assert_array_equal(downsample_labels(vol, "mode"), tensorstore_mode(vol))


def test_windows_with_many_labels():
    """3..8 distinct labels in one window (the sorting-network path), random positions."""
    rng = np.random.default_rng(1)
    windows = rng.integers(0, 6, size=(20000, 8)).astype(np.uint64) * np.uint64(2**61 + 3)
    for method in ("mode", "dvid"):
        got = downsample_labels(window_volume(windows), method).reshape(-1)
        np.testing.assert_array_equal(got, vectorized_votes(windows, method))


@pytest.mark.parametrize(
    ("values", "mode", "dvid"),
    [
        ([0] * 4 + [7] * 4, 0, 7),  # tie with background: mode -> 0, dvid -> the label
        ([9] * 4 + [7] * 4, 7, 7),  # tie of two labels -> smallest
        ([0, 0, 0, 5, 5, 6, 6, 7], 0, 5),  # background plurality; dvid tie 5/6 -> 5
        ([0, 0, 5, 5, 6, 6, 7, 7], 0, 5),  # four-way tie
        ([0] * 7 + [3], 0, 3),  # background majority: dvid keeps the lone label
        ([0] * 8, 0, 0),  # all background
        ([4] * 8, 4, 4),
        ([U64MAX] * 4 + [2**63] * 4, 2**63, 2**63),  # tie-break on unsigned order
        ([5, 5, 5, 6, 6, 6, 0, 0], 5, 5),
        ([8, 1, 8, 2, 8, 3, 0, 0], 8, 8),
        ([0, 0, 0, 0, 0, 2, 2, 1], 0, 2),
    ],
)
def test_documented_cases(values, mode, dvid):
    for perm_seed in range(4):  # the answer must not depend on where the votes sit
        w = np.random.default_rng(perm_seed).permutation(np.array(values, dtype=np.uint64))
        vol = window_volume(w[None, :])
        assert downsample_labels(vol, "mode")[0, 0, 0] == mode
        assert downsample_labels(vol, "dvid")[0, 0, 0] == dvid
        assert tensorstore_mode(vol)[0, 0, 0] == mode


@pytest.mark.parametrize(
    ("shape", "values", "mode", "dvid"),
    [
        ((1, 1, 2), [5, 3], 3, 3),  # edge window of 2: tie -> smallest
        ((1, 1, 1), [0], 0, 0),
        ((1, 2, 1), [0, 9], 0, 9),
        ((2, 1, 2), [0, 0, 0, 9], 0, 9),
        ((1, 2, 2), [4, 4, 0, 0], 0, 4),
    ],
)
def test_edge_windows_use_existing_voxels(shape, values, mode, dvid):
    vol = np.array(values, dtype=np.uint64).reshape(shape)
    assert downsample_labels(vol, "mode").reshape(-1).tolist() == [mode]
    assert downsample_labels(vol, "dvid").reshape(-1).tolist() == [dvid]
    assert tensorstore_mode(vol).reshape(-1).tolist() == [mode]


@settings(max_examples=200, deadline=None)
@given(vol=label_volumes(max_side=21))
def test_mode_equals_tensorstore(vol):
    got = downsample_labels(vol, "mode")
    assert got.shape == downsampled_shape(vol.shape)
    np.testing.assert_array_equal(got, tensorstore_mode(vol))


@settings(max_examples=120, deadline=None)
@given(vol=label_volumes(max_side=13))
def test_both_rules_equal_slow_reference(vol):
    for method in ("mode", "dvid"):
        np.testing.assert_array_equal(
            downsample_labels(vol, method), downsample_reference(vol, method)
        )


@settings(max_examples=25, deadline=None)
@given(
    shape=st.tuples(*(st.integers(1, 75) for _ in range(3))),
    shift=st.tuples(*(st.integers(0, 1) for _ in range(3))),
    n_labels=st.sampled_from([5, 30, 200]),
    seed=st.integers(0, 2**16),
)
def test_voronoi_volumes_equal_tensorstore(shape, shift, n_labels, seed):
    """s0-like segmentations with odd sizes; a one-voxel shift moves label boundaries off the
    even grid so that windows straddle them."""
    big = synthetic_volume(tuple(s + 1 for s in shape), n_labels=n_labels, seed=seed)
    vol = np.ascontiguousarray(
        big[shift[0] : shift[0] + shape[0], shift[1] : shift[1] + shape[1], shift[2] :][
            ..., : shape[2]
        ]
    )
    np.testing.assert_array_equal(downsample_labels(vol, "mode"), tensorstore_mode(vol))
    if vol.size <= 20_000:
        np.testing.assert_array_equal(
            downsample_labels(vol, "dvid"), downsample_reference(vol, "dvid")
        )


def test_repeated_downsampling_matches_tensorstore_chain():
    vol = synthetic_volume((67, 45, 99), n_labels=50, seed=3)[1:, 1:, 1:].copy()
    ours, theirs = vol, vol
    for _ in range(4):
        ours = downsample_labels(ours)
        theirs = tensorstore_mode(theirs)
        np.testing.assert_array_equal(ours, theirs)


def test_non_contiguous_and_big_endian_inputs():
    vol = synthetic_volume((20, 22, 24), n_labels=40, seed=5)
    strided = vol[:, :, ::-1]
    np.testing.assert_array_equal(
        downsample_labels(strided), downsample_labels(np.ascontiguousarray(strided))
    )
    np.testing.assert_array_equal(downsample_labels(vol.astype(">u8")), downsample_labels(vol))


def test_out_argument_is_filled():
    vol = synthetic_volume((9, 10, 11), seed=2)
    out = np.full(downsampled_shape(vol.shape), 12345, np.uint64)
    assert downsample_labels(vol, out=out) is out
    np.testing.assert_array_equal(out, tensorstore_mode(vol))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((np.zeros((2, 2, 2), np.uint32),), "dtype uint64"),
        ((np.zeros((2, 2), np.uint64),), "3-D"),
        ((np.zeros((0, 2, 2), np.uint64),), "at least 1 voxel"),
        (([[[1]]],), "numpy array"),
        ((np.zeros((2, 2, 2), np.uint64), "median"), "method"),
    ],
)
def test_bad_input_is_rejected(args, message):
    with pytest.raises(KernelError, match=message):
        downsample_labels(*args)


def test_bad_out_is_rejected():
    with pytest.raises(KernelError, match=r"shape \(1, 1, 2\)"):
        downsample_labels(np.zeros((2, 2, 3), np.uint64), out=np.zeros((1, 1, 1), np.uint64))


@settings(max_examples=150, deadline=None)
@given(
    vol=label_volumes(max_side=40),
    offset=st.tuples(*(st.integers(0, 3) for _ in range(3))),
    method=st.sampled_from(["mode", "dvid"]),
)
def test_fused_cseg_vote_equals_decode_then_downsample(vol, offset, method):
    from dvid2ng.kernels import encode_cseg
    from dvid2ng.kernels.downsample import downsample_cseg_chunk

    half = downsampled_shape(vol.shape)
    out = np.full(tuple(h + o + 1 for h, o in zip(half, offset, strict=True)), 7, np.uint64)
    downsample_cseg_chunk(encode_cseg(vol).tobytes(), vol.shape, out, offset, method)
    want = np.full_like(out, 7)
    want[
        offset[0] : offset[0] + half[0],
        offset[1] : offset[1] + half[1],
        offset[2] : offset[2] + half[2],
    ] = downsample_labels(vol, method)
    np.testing.assert_array_equal(out, want)


@settings(max_examples=200, deadline=None)
@given(vol=label_volumes(max_side=24), data=st.data())
def test_fused_cseg_vote_rejects_what_decode_rejects(vol, data):
    from dvid2ng.kernels import CsegDecodeError, decode_cseg, encode_cseg
    from dvid2ng.kernels.downsample import downsample_cseg_chunk

    enc = bytearray(encode_cseg(vol).tobytes())
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(enc) - 1))
        enc[i] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        enc = enc[: data.draw(st.integers(0, len(enc)))]
    out = np.zeros(downsampled_shape(vol.shape), np.uint64)
    try:
        decoded = decode_cseg(bytes(enc), vol.shape)
    except CsegDecodeError as e:
        with pytest.raises(CsegDecodeError) as got:
            downsample_cseg_chunk(bytes(enc), vol.shape, out)
        assert str(got.value) == str(e)
        return
    downsample_cseg_chunk(bytes(enc), vol.shape, out)
    np.testing.assert_array_equal(out, downsample_labels(decoded))


@pytest.mark.parametrize("method", ["mode", "dvid"])
@pytest.mark.parametrize("table", [(7, 3), (0, 5), (5, 0), (9, 9)])
def test_fused_vote_of_one_bit_blocks_with_any_table_order(method, table):
    """The spec allows unsorted (and repeated) lookup tables: a hand-built 8^3 block with
    1-bit indices and the table as given must vote like its decoded volume."""
    from dvid2ng.kernels import decode_cseg
    from dvid2ng.kernels.downsample import downsample_cseg_chunk

    rng = np.random.default_rng(sum(table))
    bits = (rng.random((8, 8, 8)) < rng.random()).astype(np.uint32).reshape(-1)  # x fastest
    values = np.zeros(16, np.uint32)
    for k, b in enumerate(bits):
        values[k >> 5] |= np.uint32(b) << np.uint32(k & 31)
    t = np.array(table, np.uint64)
    words = np.concatenate(
        [
            np.array([1, 18 | (1 << 24), 2], np.uint32),  # channel offset; block header
            values,
            t.view(np.uint32),  # table at word 18 after the channel offset
        ]
    )
    data = words.tobytes()
    vol = decode_cseg(data, (8, 8, 8))
    out = np.zeros((4, 4, 4), np.uint64)
    downsample_cseg_chunk(data, (8, 8, 8), out, (0, 0, 0), method)
    np.testing.assert_array_equal(out, downsample_labels(vol, method))


def _volume_before_guard_page(shape: tuple[int, int, int]) -> tuple[object, np.ndarray]:
    """A C-ordered uint64 array whose last byte is right before an inaccessible page, so that
    any read past its end crashes the process instead of returning garbage."""
    import ctypes
    import mmap

    nbytes = int(np.prod(shape)) * 8
    body = -(-nbytes // mmap.PAGESIZE) * mmap.PAGESIZE
    region = mmap.mmap(-1, body + mmap.PAGESIZE)
    base = ctypes.addressof(ctypes.c_char.from_buffer(region))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    if libc.mprotect(base + body, mmap.PAGESIZE, 0) != 0:  # PROT_NONE
        pytest.skip(f"mprotect failed (errno {ctypes.get_errno()})")
    vol = np.frombuffer(region, np.uint64, count=nbytes // 8, offset=body - nbytes)
    return region, vol.reshape(shape)


@pytest.mark.parametrize(
    "shape", [(2, 3, 16), (2, 4, 16), (3, 5, 9), (4, 6, 33), (5, 7, 8), (2, 8, 1), (6, 4, 64)]
)
def test_next_row_touching_stays_inside_the_input(shape):
    """The mode kernel touches the next output row's input ahead of time (to overlap memory
    reads): on a volume that ends at an inaccessible page, a touch past the last row would
    crash. Both settings of the touching give TensorStore's result."""
    from dvid2ng.kernels.downsample import _downsample_kernel

    region, vol = _volume_before_guard_page(shape)
    vol[...] = synthetic_volume(tuple(s + 1 for s in shape), n_labels=20, seed=sum(shape))[
        1:, 1:, 1:
    ]
    want = tensorstore_mode(np.array(vol))
    for touch in (True, False):
        out = np.zeros(downsampled_shape(shape), np.uint64)
        _downsample_kernel(vol, out, False, touch)
        np.testing.assert_array_equal(out, want)
    np.testing.assert_array_equal(downsample_labels(vol, "mode"), want)
    del vol
    region.close()


@settings(max_examples=150, deadline=None)
@given(vol=label_volumes(max_side=21))
def test_both_rules_equal_reference_with_touching_forced_on(vol):
    """downsample_labels touches the next row ahead only on inputs of 16 MiB or more (bigger than
    anything above): the same kernel with the touching forced on must give the same votes."""
    from dvid2ng.kernels.downsample import _downsample_kernel

    vol = np.ascontiguousarray(vol, dtype=np.uint64)
    for method in ("mode", "dvid"):
        out = np.zeros(downsampled_shape(vol.shape), np.uint64)
        _downsample_kernel(vol, out, method == "dvid", True)
        want = tensorstore_mode(vol) if method == "mode" else downsample_reference(vol, "dvid")
        np.testing.assert_array_equal(out, want)


def test_large_input_takes_the_touching_path_and_equals_tensorstore():
    """An input above TOUCH_MIN_BYTES (the path bench_downsample measures) through the public
    function, with boundaries off the even grid and odd sizes."""
    from dvid2ng.kernels.downsample import TOUCH_MIN_BYTES

    vol = synthetic_volume((130, 129, 131), n_labels=30, seed=7)[1:, :, 1:].copy()
    assert vol.nbytes >= TOUCH_MIN_BYTES
    np.testing.assert_array_equal(downsample_labels(vol, "mode"), tensorstore_mode(vol))
