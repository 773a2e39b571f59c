"""mpq.quantizers int4 packing: exhaustive over all nibble pairs, hypothesis over shapes and axes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mpq.quantizers import pack_int4, unpack_int4

SETTINGS = settings(max_examples=80, deadline=None)
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def ref_pack(q, axis):
    """Independent numpy packing: byte i = low nibble q[2i] | high nibble q[2i+1], zero padded."""
    q = np.moveaxis(q.astype(np.int64), axis, 0)
    n = q.shape[0]
    out = np.zeros(((n + 1) // 2, *q.shape[1:]), dtype=np.int64)
    for i in range(n):  # a loop is fine in the oracle
        nibble = q[i] % 16  # two's complement nibble
        out[i // 2] += nibble << (4 * (i % 2))
    return np.moveaxis(out.astype(np.uint8), 0, axis)


def ref_unpack(packed, axis, size):
    b = np.moveaxis(packed.astype(np.int64), axis, 0)
    vals = np.zeros((2 * b.shape[0], *b.shape[1:]), dtype=np.int64)
    vals[0::2] = b % 16
    vals[1::2] = b // 16
    vals = np.where(vals >= 8, vals - 16, vals)[:size]
    return np.moveaxis(vals.astype(np.int8), 0, axis)


@pytest.mark.parametrize("device", DEVICES)
def test_all_256_nibble_pairs_round_trip(device):
    lo, hi = np.meshgrid(np.arange(-8, 8), np.arange(-8, 8), indexing="ij")
    pairs = np.stack([lo.ravel(), hi.ravel()], axis=-1).astype(np.int8)  # (256, 2)
    packed = pack_int4(torch.from_numpy(pairs).to(device), axis=-1)
    assert packed.shape == (256, 1) and packed.dtype == torch.uint8
    expected = (lo.ravel() & 0xF) | ((hi.ravel() & 0xF) << 4)
    np.testing.assert_array_equal(packed[:, 0].cpu().numpy(), expected.astype(np.uint8))
    assert sorted(packed[:, 0].tolist()) == list(range(256))  # every byte exactly once
    unpacked = unpack_int4(packed, axis=-1)
    np.testing.assert_array_equal(unpacked.cpu().numpy(), pairs)
    # The same pairs packed along axis 0 of the transposed layout give the same bytes.
    packed_t = pack_int4(torch.from_numpy(pairs.T.copy()).to(device), axis=0)
    np.testing.assert_array_equal(packed_t[0].cpu().numpy(), expected.astype(np.uint8))


@st.composite
def int4_case(draw):
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=7))
    q = draw(hnp.arrays(np.int8, shape, elements=st.integers(-8, 7)))
    axis = draw(st.integers(-len(shape), len(shape) - 1))
    dtype = draw(st.sampled_from([torch.int8, torch.int16, torch.int32, torch.int64]))
    return q, axis, dtype


@SETTINGS
@given(c=int4_case())
def test_pack_unpack_match_reference_on_any_shape_and_axis(c):
    q, axis, dtype = c
    packed = pack_int4(torch.from_numpy(q).to(dtype), axis=axis)
    expected_shape = list(q.shape)
    n = expected_shape[axis]
    expected_shape[axis] = (n + 1) // 2
    assert tuple(packed.shape) == tuple(expected_shape)
    np.testing.assert_array_equal(packed.numpy(), ref_pack(q, axis))
    unpacked = unpack_int4(packed, axis=axis, size=n)
    assert unpacked.dtype == torch.int8
    np.testing.assert_array_equal(unpacked.numpy(), q)
    np.testing.assert_array_equal(unpacked.numpy(), ref_unpack(packed.numpy(), axis, n))
    # Unpacking the int8 view of the same bytes gives the same values.
    assert torch.equal(unpack_int4(packed.view(torch.int8), axis=axis, size=n), unpacked)


def test_odd_length_pads_high_nibble_with_zero_and_default_size_is_even():
    packed = pack_int4(torch.tensor([-1, 2, -8], dtype=torch.int8))
    assert packed.tolist() == [0x2F, 0x08]
    assert unpack_int4(packed).tolist() == [-1, 2, -8, 0]
    assert unpack_int4(packed, size=3).tolist() == [-1, 2, -8]


def test_empty_axis_packs_to_empty():
    packed = pack_int4(torch.zeros(3, 0, dtype=torch.int8), axis=1)
    assert packed.shape == (3, 0)
    assert unpack_int4(packed, axis=1).shape == (3, 0)


Q = torch.zeros(4, 6, dtype=torch.int8)


@pytest.mark.parametrize(
    ("fn", "exc", "fragment"),
    [
        (
            lambda: pack_int4(torch.tensor([0, 8, -9, 3], dtype=torch.int8)),
            ValueError,
            "Expected int4 values in [-8, 7]. Received: q with values in [-9, 8]",
        ),
        (
            lambda: pack_int4(torch.tensor([100], dtype=torch.int32)),
            ValueError,
            "values in [100, 100]",
        ),
        (lambda: pack_int4(torch.zeros(4)), TypeError, "q of dtype torch.float32"),
        (lambda: pack_int4(torch.zeros(4, dtype=torch.bool)), TypeError, "q of dtype torch.bool"),
        (lambda: pack_int4(np.zeros(4, np.int8)), TypeError, "(of type ndarray)"),
        (lambda: pack_int4(Q, axis=2), ValueError, "axis=2"),
        (lambda: pack_int4(Q, axis=-3), ValueError, "axis=-3"),
        (lambda: pack_int4(Q, axis=0.0), TypeError, "axis=0.0"),
        (lambda: pack_int4(torch.tensor(1, dtype=torch.int8)), ValueError, "shape ()"),
        (lambda: unpack_int4(Q.float()), TypeError, "packed of dtype torch.float32"),
        (lambda: unpack_int4(Q.to(torch.int32)), TypeError, "packed of dtype torch.int32"),
        (lambda: unpack_int4(Q.view(torch.uint8), size=5), ValueError, "size=5"),
        (lambda: unpack_int4(Q.view(torch.uint8), size=13), ValueError, "size=13"),
        (lambda: unpack_int4(Q.view(torch.uint8), size=11.0), TypeError, "size=11.0"),
        (lambda: unpack_int4(Q.view(torch.uint8), axis=5), ValueError, "axis=5"),
    ],
)
def test_errors_name_the_received_value(fn, exc, fragment):
    with pytest.raises(exc) as info:
        fn()
    assert fragment in str(info.value)
