"""Corrupt, truncated and extended inputs: the kernels must only ever raise KernelError
(never read past a buffer, crash, or raise anything else), and decode_dvid_block and
dvid_block_to_cseg must agree on whether a block is valid."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dvid2ng.kernels import (
    CorruptBlockError,
    CsegDecodeError,
    KernelError,
    decode_cseg,
    decode_dvid_block,
    dvid_block_header,
    dvid_block_table,
    dvid_block_to_cseg,
    encode_cseg,
)
from tests.kernels._strategies import assembled_blocks, dvid_volumes, label_volumes
from tests.kernels.reference import encode_dvid_block_reference

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _small_block() -> bytes:
    """A 16^3 block (2x2x2 sub-blocks) with 1, 2, 3, 5 and 9-label sub-blocks."""
    rng = np.random.default_rng(5)
    labels = np.array([3, 0, 2**64 - 1, 77, 2**63, 9, 10, 11, 12, 13], np.uint64)
    vol = np.empty((16, 16, 16), np.uint64)
    counts = [1, 2, 3, 5, 9, 2, 1, 4]
    i = 0
    for sz in range(2):
        for sy in range(2):
            for sx in range(2):
                c = counts[i]
                i += 1
                vol[8 * sz : 8 * sz + 8, 8 * sy : 8 * sy + 8, 8 * sx : 8 * sx + 8] = labels[
                    rng.integers(0, c, size=(8, 8, 8))
                ]
    return encode_dvid_block_reference(vol)


SMALL = _small_block()


def _outcome(fn, *args):
    """'ok' and the result, or the KernelError class; any other exception fails the test."""
    try:
        return "ok", fn(*args)
    except KernelError as e:
        assert str(e)  # a message saying what is wrong
        return type(e), None


def _exercise(block: bytes, table=None, extent=None):
    st_dec, vol = _outcome(decode_dvid_block, block, table)
    st_tc, res = _outcome(dvid_block_to_cseg, block, table, extent)
    _outcome(dvid_block_header, block)
    _outcome(dvid_block_table, block)
    if st_dec == "ok" and st_tc == "ok":
        nx, ny, nz = extent if extent is not None else vol.shape[::-1]
        crop = vol[:nz, :ny, :nx]
        assert res[0].tobytes() == encode_cseg(crop).tobytes()
    elif st_dec == "ok":  # only an out-of-range extent may make the transcoder fail
        assert st_tc is KernelError and extent is not None
    else:
        assert st_dec is CorruptBlockError
        assert st_tc in (CorruptBlockError, KernelError)


def test_every_truncation_of_a_small_block():
    assert len(SMALL) > 200
    decode_dvid_block(SMALL)
    for n in range(len(SMALL)):
        for fn in (decode_dvid_block, dvid_block_header, dvid_block_table):
            with pytest.raises(CorruptBlockError):
                fn(SMALL[:n])
        with pytest.raises(CorruptBlockError):
            dvid_block_to_cseg(SMALL[:n])


def test_every_truncation_of_a_solid_block():
    solid = struct.pack("<4IQ", 8, 8, 8, 1, 2**64 - 1)
    for n in range(len(solid)):
        with pytest.raises(CorruptBlockError):
            decode_dvid_block(solid[:n])
    # a solid block ends after its table; trailing bytes are ignored
    np.testing.assert_array_equal(
        decode_dvid_block(solid + b"junk"), np.full((64,) * 3, 2**64 - 1, np.uint64)
    )


@pytest.mark.parametrize("extra", [1, 3, 64, 1000])
def test_extended_block_is_rejected(extra):
    with pytest.raises(CorruptBlockError, match="trailing bytes"):
        decode_dvid_block(SMALL + bytes(extra))
    with pytest.raises(CorruptBlockError, match="trailing bytes"):
        dvid_block_to_cseg(SMALL + bytes(extra))


@st.composite
def mutated_blocks(draw):
    kind = draw(st.sampled_from(["small", "assembled", "encoded"]))
    if kind == "small":
        block = bytearray(SMALL)
    elif kind == "assembled":
        block = bytearray(draw(assembled_blocks(max_g=2))[0])
    else:
        block = bytearray(encode_dvid_block_reference(draw(dvid_volumes(max_g=2))))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(
            st.sampled_from(
                [
                    "flip",
                    "flip_header",
                    "header_field",
                    "count",
                    "index",
                    "byte",
                    "truncate",
                    "extend",
                ]
            )
        )
        n = len(block)
        if op == "flip" and n:
            i = draw(st.integers(0, n - 1))
            block[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "flip_header" and n:
            i = draw(st.integers(0, min(n, 16) - 1))
            block[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "header_field" and n >= 16:
            f = draw(st.integers(0, 3))
            v = draw(st.sampled_from([0, 1, 2, 7, 9, 127, 128, 129, 2**16, 2**31, 2**32 - 1]))
            block[4 * f : 4 * f + 4] = struct.pack("<I", v)
        elif op == "count" and n >= 18:
            nl = struct.unpack_from("<I", block, 12)[0]
            off = 16 + 8 * nl + 2 * draw(st.integers(0, 7))
            if off + 2 <= n:
                v = draw(st.sampled_from([0, 1, 2, 3, 4, 5, 255, 511, 512, 513, 65535]))
                block[off : off + 2] = struct.pack("<H", v)
        elif op == "index" and n >= 16:
            nl = struct.unpack_from("<I", block, 12)[0]
            nsb = 8
            off = 16 + 8 * nl + 2 * nsb + 4 * draw(st.integers(0, 20))
            if off + 4 <= n:
                v = draw(st.sampled_from([0, 1, nl - 1, nl, nl + 1, 2**32 - 1]))
                block[off : off + 4] = struct.pack("<I", v % 2**32)
        elif op == "byte" and n:
            i = draw(st.integers(0, n - 1))
            block[i] = draw(st.integers(0, 255))
        elif op == "truncate":
            del block[draw(st.integers(0, n)) :]
        elif op == "extend":
            block += draw(st.binary(min_size=1, max_size=40))
    return bytes(block)


@FUZZ
@given(block=mutated_blocks(), data=st.data())
def test_mutated_blocks_only_raise_kernel_errors(block, data):
    table = None
    if data.draw(st.booleans()) and len(block) >= 16:
        nl = struct.unpack_from("<I", block, 12)[0]
        if nl > 1000:  # a corrupted count: any modest table is the wrong length
            nl = data.draw(st.integers(0, 1000))
        size = data.draw(st.sampled_from([nl, max(nl - 1, 0), nl + 1]))
        table = np.arange(size, dtype=np.uint64) % np.uint64(3)
    extent = None
    if data.draw(st.booleans()):
        extent = tuple(data.draw(st.integers(0, 70)) for _ in range(3))
    _exercise(block, table, extent)


@FUZZ
@given(block=st.binary(max_size=300))
def test_random_bytes_as_dvid_block(block):
    _exercise(block)


@FUZZ
@given(header=st.tuples(*(st.integers(0, 2**32 - 1),) * 4), body=st.binary(max_size=200))
def test_random_headers(header, body):
    _exercise(struct.pack("<4I", *header) + body)


@st.composite
def cseg_inputs(draw):
    shape = tuple(draw(st.integers(1, 20)) for _ in range(3))
    if draw(st.booleans()):
        vol = draw(label_volumes(shape=shape))
        data = bytearray(encode_cseg(vol).tobytes())
        for _ in range(draw(st.integers(1, 4))):
            op = draw(st.sampled_from(["flip", "byte", "truncate", "extend", "header"]))
            n = len(data)
            if op == "flip" and n:
                i = draw(st.integers(0, n - 1))
                data[i] ^= 1 << draw(st.integers(0, 7))
            elif op == "byte" and n:
                data[draw(st.integers(0, n - 1))] = draw(st.integers(0, 255))
            elif op == "truncate":
                del data[draw(st.integers(0, n)) :]
            elif op == "extend":
                data += draw(st.binary(min_size=1, max_size=16))
            elif op == "header" and n >= 12:
                w = draw(st.integers(0, min(n // 4 - 1, 40)))
                data[4 * w : 4 * w + 4] = struct.pack("<I", draw(st.integers(0, 2**32 - 1)))
        data = bytes(data)
    else:
        data = draw(st.binary(max_size=400))
    if draw(st.booleans()):  # decode with the wrong shape
        shape = tuple(draw(st.integers(1, 24)) for _ in range(3))
    return data, shape


@FUZZ
@given(inp=cseg_inputs())
def test_corrupt_cseg_only_raises_cseg_errors(inp):
    data, shape = inp
    try:
        out = decode_cseg(data, shape)
    except CsegDecodeError as e:
        assert str(e)
        return
    assert out.shape == shape and out.dtype == np.uint64
