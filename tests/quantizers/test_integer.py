"""mpq.quantizers integer quantizers: bit-exact against an independent numpy (float64) reference."""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mpq.quantizers import (
    dequantize,
    pack_int4,
    quantize_asymmetric,
    quantize_symmetric,
    quantize_with_scale,
    unpack_int4,
)

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
QMAX = {"int8": 127, "int4": 7}
QRANGE = {"int8": (-128, 127), "int4": (-8, 7)}
EPS32 = np.float64(np.float32(1e-7))
TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


# ---------------------------------------------------------------------------------------------
# Reference (numpy float64; every float32 operation of the spec is a float64 operation rounded
# once to float32, which is exactly the IEEE float32 result for +, -, *, /).


def div32(a, b):
    return (np.asarray(a, np.float64) / np.asarray(b, np.float64)).astype(np.float32)


def ref_stat(x64, reduce_axes, group_size, fn):
    """fn(x, axis=..., keepdims=True) over reduce_axes, or per group by explicit slicing."""
    if group_size is None:
        axes = tuple(range(x64.ndim)) if reduce_axes is None else reduce_axes
        axes = (axes,) if isinstance(axes, int) else tuple(axes)
        return fn(x64, axis=axes, keepdims=True) if axes else fn(x64, axis=(), keepdims=True)
    axis = reduce_axes % x64.ndim
    n = x64.shape[axis]
    parts = [
        fn(np.take(x64, np.arange(s, min(s + group_size, n)), axis=axis), axis=axis, keepdims=True)
        for s in range(0, n, group_size)
    ]
    return np.concatenate(parts, axis=axis)


def ref_expand(p, x_shape, reduce_axes, group_size):
    if group_size is None:
        return np.broadcast_to(p, x_shape)
    axis = reduce_axes % len(x_shape)
    return np.take(p, np.arange(x_shape[axis]) // group_size, axis=axis)


def ref_symmetric(x32, fmt, reduce_axes=None, group_size=None):
    qmax = QMAX[fmt]
    x64 = x32.astype(np.float64)
    absmax = ref_stat(np.abs(x64), reduce_axes, group_size, np.max)
    scale = div32(np.maximum(absmax, EPS32), qmax)
    full = ref_expand(scale, x32.shape, reduce_axes, group_size)
    q = np.clip(np.round(div32(x64, full)), -qmax, qmax).astype(np.int8)
    return q, scale


def ref_asymmetric(x32, fmt, reduce_axes=None, group_size=None):
    qmin, qmax = QRANGE[fmt]
    x64 = x32.astype(np.float64)
    lo = np.minimum(ref_stat(x64, reduce_axes, group_size, np.min), 0.0)
    hi = np.maximum(ref_stat(x64, reduce_axes, group_size, np.max), 0.0)
    rng = (hi - lo).astype(np.float32)
    scale = div32(np.maximum(rng.astype(np.float64), EPS32), qmax - qmin)
    zero = np.clip(np.round(div32(-lo, scale)) + qmin, qmin, qmax)
    s_full = ref_expand(scale, x32.shape, reduce_axes, group_size)
    z_full = ref_expand(zero, x32.shape, reduce_axes, group_size)
    q = np.clip(np.round(div32(x64, s_full)) + z_full, qmin, qmax).astype(np.int8)
    return q, scale, zero.astype(np.int8)


# ---------------------------------------------------------------------------------------------
# Strategies

shapes = hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=7)


def float_arrays(shape, max_abs=3e38):
    """float32 arrays mixing zeros, subnormals, huge values and ordinary magnitudes."""
    ordinary = st.floats(-1e4, 1e4, width=32)
    bound = float(np.float32(max_abs))
    wide = st.floats(-bound, bound, width=32, allow_subnormal=True)
    return hnp.arrays(np.float32, shape, elements=st.one_of(ordinary, wide, st.just(0.0)))


@st.composite
def reduce_axes_for(draw, ndim):
    kind = draw(st.sampled_from(["none", "int", "tuple", "empty"]))
    if kind == "none":
        return None
    if kind == "int":
        return draw(st.integers(-ndim, ndim - 1))
    if kind == "empty":
        return ()
    axes = draw(st.lists(st.integers(0, ndim - 1), min_size=1, max_size=ndim, unique=True))
    return tuple(a - ndim if draw(st.booleans()) else a for a in axes)


@st.composite
def case(draw, max_abs=3e38, grouped=False):
    shape = draw(shapes)
    x = draw(float_arrays(shape, max_abs))
    dtype = draw(st.sampled_from(list(TORCH_DTYPES)))
    # Round to the input dtype first: the reference then sees the same (exactly widened) values.
    xt = torch.from_numpy(x).to(TORCH_DTYPES[dtype])
    if dtype == "float16":  # out-of-range values became inf; keep the case finite
        xt = torch.nan_to_num(xt, posinf=65504.0, neginf=-65504.0)
    if grouped:
        axis = draw(st.integers(-len(shape), len(shape) - 1))
        group_size = draw(st.integers(1, 9))
        return xt, axis, group_size
    return xt, draw(reduce_axes_for(len(shape))), None


def as_np(t):
    return t.cpu().numpy()


# ---------------------------------------------------------------------------------------------
# Symmetric


@SETTINGS
@given(c=st.one_of(case(), case(grouped=True)), fmt=st.sampled_from(["int8", "int4"]))
def test_symmetric_matches_reference(c, fmt):
    x, axes, group_size = c
    q, scale = quantize_symmetric(x, fmt, reduce_axes=axes, group_size=group_size)
    q_ref, scale_ref = ref_symmetric(as_np(x.float()), fmt, axes, group_size)
    assert q.dtype == torch.int8 and scale.dtype == torch.float32
    assert q.shape == x.shape and scale.shape == scale_ref.shape
    np.testing.assert_array_equal(as_np(q), q_ref)
    np.testing.assert_array_equal(as_np(scale), scale_ref)
    assert int(q.abs().max()) <= QMAX[fmt]


@SETTINGS
@given(
    k=hnp.arrays(np.int64, st.integers(1, 40), elements=st.integers(-254, 254)),
    e=st.integers(-20, 30),  # absmax = qmax * 2**e stays above the 1e-7 floor
    fmt=st.sampled_from(["int8", "int4"]),
)
def test_symmetric_ties_round_half_to_even(k, e, fmt):
    """x = (k / 2) * 2**e with one element at qmax * 2**e: scale is exactly 2**e, so x / scale hits
    every half-integer and ties must round to even."""
    qmax = QMAX[fmt]
    k = np.clip(k, -2 * qmax, 2 * qmax)
    k[0] = 2 * qmax
    x = torch.from_numpy((k / 2.0 * 2.0**e).astype(np.float32))
    q, scale = quantize_symmetric(x, fmt)
    assert float(scale) == 2.0**e
    np.testing.assert_array_equal(as_np(q), np.round(k / 2.0).astype(np.int8))


def test_symmetric_hand_examples():
    q, scale = quantize_symmetric(torch.tensor([127.0, -63.5, 0.5, 1.5, -2.5]))
    assert float(scale) == 1.0
    assert q.tolist() == [127, -64, 0, 2, -2]
    # int4: +absmax -> 7, -absmax -> -7 (never -8), scale = absmax / 7.
    q, scale = quantize_symmetric(torch.tensor([[3.5, -7.0], [-3.5, 7.0]]), "int4", reduce_axes=1)
    assert q.tolist() == [[4, -7], [-4, 7]]  # 3.5 / 1.0 = 3.5 -> 4 (half to even)
    assert scale.tolist() == [[1.0], [1.0]]


def test_symmetric_all_zero_channel_uses_epsilon_floor():
    x = torch.tensor([[0.0, 0.0], [0.0, 2.54]])
    q, scale = quantize_symmetric(x, reduce_axes=0)
    eps_scale = np.float32(np.float64(np.float32(1e-7)) / 127)
    assert float(scale[0, 0]) == float(eps_scale)
    assert float(scale[0, 1]) == float(np.float32(np.float64(np.float32(2.54)) / 127))
    assert q.tolist() == [[0, 0], [0, 127]]


def test_grouped_last_group_padding_keeps_abs_max():
    # n = 5, g = 2: groups [1, -2], [3, 4], [-5]; the padded last group keeps its abs-max 5.
    x = torch.tensor([[1.0, -2.0, 3.0, 4.0, -5.0]])
    q, scale = quantize_symmetric(x, "int8", reduce_axes=1, group_size=2)
    expected = [float(np.float32(v / 127)) for v in (2.0, 4.0, 5.0)]
    assert scale.shape == (1, 3) and scale[0].tolist() == expected
    assert q.tolist() == [[64, -127, 95, 127, -127]]


@pytest.mark.parametrize("device", DEVICES)
def test_symmetric_on_device(device):
    x = torch.randn(8, 33, generator=torch.Generator().manual_seed(0))
    q, scale = quantize_symmetric(x.to(device), "int4", reduce_axes=-1, group_size=8)
    q_ref, scale_ref = ref_symmetric(x.numpy(), "int4", -1, 8)
    assert q.device.type == device
    np.testing.assert_array_equal(as_np(q), q_ref)
    np.testing.assert_array_equal(as_np(scale), scale_ref)


# ---------------------------------------------------------------------------------------------
# Asymmetric


@SETTINGS
@given(c=st.one_of(case(1e38), case(1e38, grouped=True)), fmt=st.sampled_from(["int4", "int8"]))
def test_asymmetric_matches_reference(c, fmt):
    x, axes, group_size = c
    q, scale, zero = quantize_asymmetric(x, fmt, reduce_axes=axes, group_size=group_size)
    q_ref, scale_ref, zero_ref = ref_asymmetric(as_np(x.float()), fmt, axes, group_size)
    assert (q.dtype, scale.dtype, zero.dtype) == (torch.int8, torch.float32, torch.int8)
    np.testing.assert_array_equal(as_np(q), q_ref)
    np.testing.assert_array_equal(as_np(scale), scale_ref)
    np.testing.assert_array_equal(as_np(zero), zero_ref)
    qmin, qmax = QRANGE[fmt]
    assert qmin <= int(zero.min()) and int(zero.max()) <= qmax


def test_asymmetric_keras_grouped_int4_kernel_scheme():
    # [in=5, out=2] kernel, groups of 2 along the input axis: scale/zero of shape [3, 2].
    w = torch.tensor(
        [[0.0, -7.5], [1.5, 7.5], [2.0, -3.0], [3.0, -1.5], [-0.75, 0.0]], dtype=torch.float32
    )
    q, scale, zero = quantize_asymmetric(w, "int4", reduce_axes=0, group_size=2)
    assert scale.shape == zero.shape == (3, 2)
    # group 0, column 0: lo = 0, hi = 1.5 -> scale 0.1, zero -8
    assert float(scale[0, 0]) == float(np.float32(1.5 / 15)) and int(zero[0, 0]) == -8
    # group 0, column 1: lo = -7.5, hi = 7.5 -> scale 1, zero = round(7.5) - 8 = 0
    assert float(scale[0, 1]) == 1.0 and int(zero[0, 1]) == 0
    # x = 7.5 -> 7.5 -> 8 (half to even), clipped to 7: saturation at a range end.
    assert int(q[1, 1]) == 7 and int(q[0, 1]) == -8
    # last (padded) group, column 1 is all zero: scale = eps / 15, zero = q = -8 -> exact 0.
    assert float(scale[2, 1]) == float(np.float32(np.float64(np.float32(1e-7)) / 15))
    assert int(zero[2, 1]) == -8 and int(q[4, 1]) == -8
    w_hat = dequantize(q, scale, zero, group_size=2, group_axis=0)
    assert float(w_hat[4, 1]) == 0.0
    step = scale.repeat_interleave(2, dim=0)[:5]
    assert bool(((w_hat - w).abs() <= step / 2 * (1 + 2**-20)).all())


def test_asymmetric_range_holds_zero_exactly():
    # All-positive group: lo is widened to 0 so that 0 stays exactly representable.
    x = torch.tensor([2.0, 3.0, 0.0])
    q, scale, zero = quantize_asymmetric(x, "int4")
    assert int(zero) == -8
    assert float(dequantize(q, scale, zero)[2]) == 0.0


# ---------------------------------------------------------------------------------------------
# quantize_with_scale / dequantize


@SETTINGS
@given(c=st.one_of(case(1e38), case(1e38, grouped=True)), fmt=st.sampled_from(["int4", "int8"]))
def test_quantize_with_scale_reproduces_quantizers(c, fmt):
    x, axes, group_size = c
    kw = {} if group_size is None else {"group_size": group_size, "group_axis": axes}
    q, scale = quantize_symmetric(x, fmt, reduce_axes=axes, group_size=group_size)
    assert torch.equal(quantize_with_scale(x, scale, fmt=fmt, **kw), q)
    q, scale, zero = quantize_asymmetric(x, fmt, reduce_axes=axes, group_size=group_size)
    assert torch.equal(quantize_with_scale(x, scale, zero, fmt=fmt, **kw), q)


@SETTINGS
@given(c=st.one_of(case(1e30), case(1e30, grouped=True)), out=st.sampled_from(list(TORCH_DTYPES)))
def test_dequantize_matches_reference(c, out):
    x, axes, group_size = c
    kw = {} if group_size is None else {"group_size": group_size, "group_axis": axes}
    q, scale, zero = quantize_asymmetric(x, "int4", reduce_axes=axes, group_size=group_size)
    got = dequantize(q, scale, zero, dtype=TORCH_DTYPES[out], **kw)
    s_full = ref_expand(as_np(scale), tuple(x.shape), axes, group_size).astype(np.float64)
    z_full = ref_expand(as_np(zero), tuple(x.shape), axes, group_size).astype(np.float64)
    ref32 = ((as_np(q).astype(np.float64) - z_full) * s_full).astype(np.float32)
    with np.errstate(over="ignore"):  # float16 overflow -> inf, as torch
        ref = ref32.astype(
            {"float16": np.float16, "bfloat16": ml_dtypes.bfloat16}.get(out, np.float32)
        )
    assert got.dtype == TORCH_DTYPES[out]
    np.testing.assert_array_equal(as_np(got.float()), ref.astype(np.float32))
    q, scale = quantize_symmetric(x, "int8", reduce_axes=axes, group_size=group_size)
    ref = as_np(q) * ref_expand(as_np(scale), tuple(x.shape), axes, group_size).astype(np.float64)
    np.testing.assert_array_equal(as_np(dequantize(q, scale, **kw)), ref.astype(np.float32))


def test_int4_grouped_pack_round_trip_composes():
    w = torch.randn(300, 7, generator=torch.Generator().manual_seed(1))
    q, scale, zero = quantize_asymmetric(w, "int4", reduce_axes=0, group_size=128)
    packed = pack_int4(q, axis=-1)
    assert packed.shape == (300, 4) and packed.dtype == torch.uint8
    q2 = unpack_int4(packed, axis=-1, size=7)
    direct = dequantize(q, scale, zero, group_size=128, group_axis=0)
    assert torch.equal(dequantize(q2, scale, zero, group_size=128, group_axis=0), direct)
    # Error of asymmetric rounding is at most half a step (plus the saturating tie at the ends).
    step = dequantize(
        torch.ones_like(q), scale, torch.zeros_like(zero), group_size=128, group_axis=0
    )
    assert bool(((direct - w).abs() <= step + 1e-6).all())
    assert math.isfinite(float(direct.sum()))


# ---------------------------------------------------------------------------------------------
# Errors: type + message naming what was received

X = torch.ones(4, 6)
Q8 = torch.ones(4, 6, dtype=torch.int8)


@pytest.mark.parametrize(
    ("fn", "exc", "fragment"),
    [
        (lambda: quantize_symmetric([1.0, 2.0]), TypeError, "x=[1.0, 2.0] (of type list)"),
        (lambda: quantize_symmetric(Q8), TypeError, "dtype torch.int8"),
        (lambda: quantize_symmetric(torch.ones(0, 3)), ValueError, "shape (0, 3)"),
        (lambda: quantize_symmetric(X, "int2"), ValueError, "fmt='int2' (of type str)"),
        (lambda: quantize_symmetric(X, torch.float16), ValueError, "fmt=torch.float16"),
        (lambda: quantize_symmetric(X, reduce_axes=2), ValueError, "reduce_axes=2"),
        (lambda: quantize_symmetric(X, reduce_axes=-3), ValueError, "reduce_axes=-3"),
        (lambda: quantize_symmetric(X, reduce_axes=(0, -2)), ValueError, "reduce_axes=(0, -2)"),
        (lambda: quantize_symmetric(X, reduce_axes=1.0), TypeError, "reduce_axes=1.0"),
        (lambda: quantize_symmetric(X, reduce_axes=True), TypeError, "reduce_axes=True"),
        (lambda: quantize_symmetric(X, reduce_axes=0, group_size=0), ValueError, "group_size=0"),
        (lambda: quantize_symmetric(X, reduce_axes=0, group_size=2.0), TypeError, "group_size=2.0"),
        (lambda: quantize_symmetric(X, group_size=2), ValueError, "reduce_axes=None"),
        (
            lambda: quantize_symmetric(X, reduce_axes=(0, 1), group_size=2),
            ValueError,
            "reduce_axes=(0, 1)",
        ),
        (
            lambda: quantize_symmetric(torch.tensor([1.0, float("nan")])),
            ValueError,
            "1 non-finite element(s) (e.g. nan)",
        ),
        (
            lambda: quantize_asymmetric(torch.tensor([float("inf"), 1.0])),
            ValueError,
            "(e.g. inf)",
        ),
        (
            lambda: quantize_asymmetric(torch.tensor([3e38, -3e38])),
            ValueError,
            "values in [-3",
        ),
        (lambda: dequantize(X, torch.ones(1)), TypeError, "q of dtype torch.float32"),
        (lambda: dequantize(Q8, torch.ones(1, dtype=torch.int8)), TypeError, "scale of dtype"),
        (lambda: dequantize(Q8, torch.ones(4, 5)), ValueError, "scale of shape (4, 5)"),
        (lambda: dequantize(Q8, torch.ones(2, 4, 6)), ValueError, "scale of shape (2, 4, 6)"),
        (
            lambda: dequantize(Q8, torch.ones(1, 6), torch.ones(4, 5, dtype=torch.int8)),
            ValueError,
            "zero of shape (4, 5)",
        ),
        (lambda: dequantize(Q8, torch.ones(1, 6), torch.ones(1, 6)), TypeError, "zero of dtype"),
        (lambda: dequantize(Q8, torch.ones(1, 6), dtype=torch.int8), TypeError, "dtype=torch.int8"),
        (lambda: dequantize(Q8, torch.ones(2, 6), group_size=3), ValueError, "group_axis=None"),
        (lambda: dequantize(Q8, torch.ones(1, 6), group_axis=0), ValueError, "group_axis=0"),
        (
            lambda: dequantize(Q8, torch.ones(3, 6), group_size=3, group_axis=0),
            ValueError,
            "scale of shape (3, 6)",
        ),
        (
            lambda: dequantize(Q8, torch.ones(2, 6), group_size=3, group_axis=2),
            ValueError,
            "group_axis=2",
        ),
        (lambda: quantize_with_scale(X, torch.ones(3)), ValueError, "scale of shape (3,)"),
        (lambda: quantize_with_scale(X, 2.0), TypeError, "scale=2.0 (of type float)"),
        (lambda: quantize_with_scale(X, torch.ones(1), fmt="float8_e4m3fn"), ValueError, "fmt="),
    ],
)
def test_errors_name_the_received_value(fn, exc, fragment):
    with pytest.raises(exc) as info:
        fn()
    assert fragment in str(info.value)


def test_check_finite_false_skips_the_check_and_propagates_to_the_scale():
    x = torch.tensor([[1.0, float("nan")], [2.0, 4.0]])
    q, scale = quantize_symmetric(x, reduce_axes=1, check_finite=False)
    assert math.isnan(float(scale[0, 0])) and float(scale[1, 0]) == float(np.float32(4 / 127))
    assert q[1].tolist() == [64, 127]


def test_float64_input_is_rounded_to_float32_first():
    x64 = torch.tensor([1.0 + 2.0**-40, 0.3], dtype=torch.float64)
    q, scale = quantize_symmetric(x64)
    q32, scale32 = quantize_symmetric(x64.float())
    assert torch.equal(q, q32) and torch.equal(scale, scale32)


# ---------------------------------------------------------------------------------------------
# Properties


def qmax_slack(fmt):
    # |x / scale| may exceed qmax by a float32 rounding of the scale; the clip then adds at most
    # qmax * 2**-23 steps of error.
    return QMAX[fmt] * 2.0**-22


@SETTINGS
@given(c=case(1e30), fmt=st.sampled_from(["int8", "int4"]))
def test_symmetric_error_is_at_most_half_a_step(c, fmt):
    x, axes, _ = c
    x = x.float()
    q, scale = quantize_symmetric(x, fmt, reduce_axes=axes)
    err = (dequantize(q, scale).double() - x.double()).abs()
    bound = scale.double() / 2 * (1 + 2**-20) + scale.double() * qmax_slack(fmt)
    assert bool((err <= bound).all())


@SETTINGS
@given(c=case(1e30, grouped=True))
def test_one_group_covering_the_axis_equals_per_channel(c):
    x, axis, _ = c
    n = x.shape[axis]
    for g in (n, n + 3):
        q_g, s_g = quantize_symmetric(x, "int4", reduce_axes=axis, group_size=g)
        q_c, s_c = quantize_symmetric(x, "int4", reduce_axes=axis)
        assert torch.equal(q_g, q_c) and torch.equal(s_g, s_c)
        q_g, s_g, z_g = quantize_asymmetric(x, "int4", reduce_axes=axis, group_size=g)
        q_c, s_c, z_c = quantize_asymmetric(x, "int4", reduce_axes=axis)
        assert torch.equal(q_g, q_c) and torch.equal(s_g, s_c) and torch.equal(z_g, z_c)


def test_non_contiguous_input():
    w = torch.randn(6, 10, generator=torch.Generator().manual_seed(3))
    q_t, s_t = quantize_symmetric(w.t(), "int8", reduce_axes=1, group_size=4)
    q, s = quantize_symmetric(w.t().contiguous(), "int8", reduce_axes=1, group_size=4)
    assert torch.equal(q_t, q) and torch.equal(s_t, s)


# ---------------------------------------------------------------------------------------------
# The layers' per-row int8 hot path (mpq.quantizers.integer.quantize_rows_int8)


@SETTINGS
@given(c=case(), wide=st.booleans())
def test_rows_int8_is_bit_identical_to_quantize_symmetric(c, wide):
    from mpq.quantizers.integer import quantize_rows_int8

    x, _, _ = c
    if wide:
        x = x.to(torch.float64)
    q, scale = quantize_rows_int8(x)
    q_want, scale_want = quantize_symmetric(x, "int8", reduce_axes=-1, check_finite=False)
    assert q.dtype == torch.int8 and scale.dtype == torch.float32
    assert torch.equal(q, q_want)
    assert torch.equal(scale, scale_want) and scale.shape == scale_want.shape


def test_rows_int8_ties_and_epsilon_floor_match_quantize_symmetric():
    from mpq.quantizers.integer import quantize_rows_int8

    # absmax 127 * 2**-3: scale 2**-3, so x / scale hits half-integers (ties to even); a zero
    # row takes the 1e-7 floor.
    x = torch.tensor([[0.0625, 0.1875, -0.3125, 15.875], [0.0, 0.0, 0.0, 0.0]])
    q, scale = quantize_rows_int8(x)
    assert q.tolist() == [[0, 2, -2, 127], [0, 0, 0, 0]]
    q_want, scale_want = quantize_symmetric(x, "int8", reduce_axes=-1, check_finite=False)
    assert torch.equal(q, q_want) and torch.equal(scale, scale_want)


def test_rows_int8_empty_input_raises_like_quantize_symmetric():
    from mpq.quantizers.integer import quantize_rows_int8

    with pytest.raises(ValueError, match="Expected") as got:
        quantize_rows_int8(torch.empty(0, 4))
    with pytest.raises(ValueError) as want:
        quantize_symmetric(torch.empty(0, 4), "int8", reduce_axes=-1, check_finite=False)
    assert str(got.value) == str(want.value)
