"""mpq.quantizers fake quantization: forward bit-exact, straight-through gradient mask exact."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mpq.quantizers import (
    dequantize,
    fake_quantize,
    fake_quantize_dynamic,
    quantize_asymmetric,
    quantize_dequantize,
    quantize_symmetric,
    quantize_with_scale,
)

SETTINGS = settings(max_examples=60, deadline=None)
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
INT = {"int8": (-128, 127), "int4": (-8, 7)}
FP8 = {
    "float8_e4m3fn": ml_dtypes.float8_e4m3fn,
    "float8_e5m2": ml_dtypes.float8_e5m2,
    "float8_e4m3fnuz": ml_dtypes.float8_e4m3fnuz,
    "float8_e5m2fnuz": ml_dtypes.float8_e5m2fnuz,
}
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def div32(a, b):
    return (np.asarray(a, np.float64) / np.asarray(b, np.float64)).astype(np.float32)


def ref_mask(x32, scale32, zero, fmt):
    """Where the saturating clamp does not change the result (independent numpy/ml_dtypes)."""
    with np.errstate(invalid="ignore", over="ignore"):
        v = div32(x32, scale32)
        if fmt in FP8:
            c = v.astype(FP8[fmt]).astype(np.float64)  # ml_dtypes: RNE, no saturation
            return np.isfinite(c) & (np.abs(c) <= float(ml_dtypes.finfo(FP8[fmt]).max))
        qmin, qmax = INT[fmt]
        r = np.round(v.astype(np.float64))
        if zero is None:
            return (r >= -qmax) & (r <= qmax)
        r = r + zero
        return (r >= qmin) & (r <= qmax)


def run(x, fn, upstream=None):
    leaf = x.clone().requires_grad_(True)
    y = fn(leaf)
    y.backward(torch.ones_like(y) if upstream is None else upstream)
    return y.detach(), leaf.grad


@st.composite
def given_scale_case(draw):
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=8))
    fmt = draw(st.sampled_from([*INT, *FP8]))
    values = st.one_of(st.floats(-1e5, 1e5, width=32), st.floats(-3.0, 3.0, width=32), st.just(0.0))
    x = draw(hnp.arrays(np.float32, shape, elements=values))
    scale_shape = (*shape[:-1], 1) if draw(st.booleans()) else ()
    scale = draw(
        hnp.arrays(
            np.float32, scale_shape, elements=st.sampled_from([2.0**-8, 0.01, 0.5, 3.0, 64.0])
        )
    )
    zero = None
    if fmt in INT and draw(st.booleans()):
        zero = draw(hnp.arrays(np.int8, scale_shape, elements=st.integers(*INT[fmt])))
    dtype = draw(st.sampled_from(DTYPES))
    return x, scale, zero, fmt, dtype


@SETTINGS
@given(c=given_scale_case())
def test_fake_quantize_forward_and_gradient_are_exact(c):
    x_np, scale_np, zero_np, fmt, dtype = c
    x = torch.from_numpy(x_np).to(dtype)
    scale = torch.from_numpy(scale_np)
    zero = None if zero_np is None else torch.from_numpy(zero_np)
    upstream = torch.randn(x.shape, generator=torch.Generator().manual_seed(0)).to(dtype)
    y, grad = run(x, lambda t: fake_quantize(t, scale, zero, fmt=fmt), upstream)
    assert y.dtype == dtype and grad.dtype == dtype
    if fmt in FP8:
        expected = quantize_dequantize(x, scale, fmt)
    else:
        expected = dequantize(
            quantize_with_scale(x, scale, zero, fmt=fmt), scale, zero, dtype=dtype
        )
    assert torch.equal(y, expected)
    mask = ref_mask(x.float().numpy(), scale_np, zero_np, fmt)
    np.testing.assert_array_equal(
        grad.float().numpy(), np.where(mask, upstream.float().numpy(), 0.0)
    )


def test_gradient_is_one_inside_and_zero_outside_the_range():
    x = torch.tensor([-9.0, -7.6, -7.4, 0.0, 3.3, 7.5, 7.6, 100.0, float("nan")])
    # int4 symmetric [-7, 7], scale 1: -7.4 -> -7 passes, -7.6 -> -8 saturates; 7.5 -> 8 (tie).
    y, grad = run(x, lambda t: fake_quantize(t, torch.tensor(1.0), fmt="int4"))
    assert grad.tolist() == [0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    assert y[:8].tolist() == [-7.0, -7.0, -7.0, 0.0, 3.0, 7.0, 7.0, 7.0] and torch.isnan(y[8])
    # With a zero point the full storage range [-8, 7] is used: q = round(x) + zero.
    y, grad = run(
        x,
        lambda t: fake_quantize(
            t, torch.tensor(1.0), torch.tensor(1, dtype=torch.int8), fmt="int4"
        ),
    )
    assert grad.tolist() == [1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    # float8 e4m3fn: 464 still rounds to 448 (tie to even), 465 does not.
    x = torch.tensor([448.0, 464.0, 465.0, -464.0, -1e9])
    y, grad = run(x, lambda t: fake_quantize(t, torch.tensor(1.0), fmt="float8_e4m3fn"))
    assert grad.tolist() == [1.0, 1.0, 0.0, 1.0, 0.0]
    assert y.tolist() == [448.0, 448.0, 448.0, -448.0, -448.0]
    # e5m2: the tie at 61440 rounds up to inf, so it is outside.
    x = torch.tensor([61439.0, 61440.0])
    _, grad = run(x, lambda t: fake_quantize(t, torch.tensor(1.0), fmt="float8_e5m2"))
    assert grad.tolist() == [1.0, 0.0]


@st.composite
def dynamic_case(draw):
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=8))
    x = draw(hnp.arrays(np.float32, shape, elements=st.floats(-1e4, 1e4, width=32)))
    ndim = len(shape)
    if draw(st.booleans()):
        return x, draw(st.integers(-ndim, ndim - 1)), draw(st.integers(1, 5))
    return x, draw(st.one_of(st.none(), st.integers(-ndim, ndim - 1))), None


@SETTINGS
@given(c=dynamic_case(), fmt=st.sampled_from([*INT, "float8_e4m3fn", "float8_e5m2"]))
def test_dynamic_symmetric_is_exact_and_never_blocks_the_gradient(c, fmt):
    x_np, axes, group_size = c
    x = torch.from_numpy(x_np)
    y, grad = run(
        x, lambda t: fake_quantize_dynamic(t, fmt, reduce_axes=axes, group_size=group_size)
    )
    assert torch.equal(grad, torch.ones_like(x))
    if fmt in INT:
        q, scale = quantize_symmetric(x, fmt, reduce_axes=axes, group_size=group_size)
        kw = {} if group_size is None else {"group_size": group_size, "group_axis": axes}
        assert torch.equal(y, dequantize(q, scale, **kw))


@SETTINGS
@given(c=dynamic_case(), fmt=st.sampled_from(list(INT)))
def test_dynamic_asymmetric_is_exact(c, fmt):
    x_np, axes, group_size = c
    x = torch.from_numpy(x_np)
    fn = lambda t: fake_quantize_dynamic(  # noqa: E731
        t, fmt, reduce_axes=axes, group_size=group_size, symmetric=False
    )
    y, grad = run(x, fn)
    q, scale, zero = quantize_asymmetric(x, fmt, reduce_axes=axes, group_size=group_size)
    kw = {} if group_size is None else {"group_size": group_size, "group_axis": axes}
    assert torch.equal(y, dequantize(q, scale, zero, **kw))
    s_full = scale if group_size is None else scale.repeat_interleave(group_size, axes)
    z_full = zero if group_size is None else zero.repeat_interleave(group_size, axes)
    if group_size is not None:
        s_full = s_full.narrow(axes, 0, x.shape[axes])
        z_full = z_full.narrow(axes, 0, x.shape[axes])
    mask = ref_mask(x_np, s_full.numpy(), z_full.numpy().astype(np.float64), fmt)
    np.testing.assert_array_equal(grad.numpy(), mask.astype(np.float32))


def test_dynamic_asymmetric_saturating_tie_blocks_the_gradient():
    # lo = -7.5, hi = 7.5: scale 1, zero 0; 7.5 -> 8 -> clipped to 7.
    _, grad = run(
        torch.tensor([-7.5, 0.0, 7.5]),
        lambda t: fake_quantize_dynamic(t, "int4", symmetric=False),
    )
    assert grad.tolist() == [1.0, 1.0, 0.0]


def test_dynamic_float8_all_zero_slice_uses_unit_scale():
    x = torch.tensor([[0.0, 0.0], [448.0, -3.0]])
    y = fake_quantize_dynamic(x, "float8_e4m3fn", reduce_axes=1)
    assert y.tolist() == [[0.0, 0.0], [448.0, -3.0]]


def test_scale_and_zero_get_no_gradient_and_grouped_parameters_work():
    scale = torch.tensor([[0.5], [2.0]], requires_grad=True)  # groups of 2 along axis 0
    x = torch.tensor([[1.0, 64.0], [3.0, 4.0], [5.0, 100.0]], requires_grad=True)
    y = fake_quantize(x, scale, fmt="int8", group_size=2, group_axis=0)
    y.sum().backward()
    assert scale.grad is None
    # 64 / 0.5 = 128 saturates to 127; 5 / 2 = 2.5 rounds to 2 (half to even).
    assert y.tolist() == [[1.0, 63.5], [3.0, 4.0], [4.0, 100.0]]
    assert x.grad.tolist() == [[1.0, 0.0], [1.0, 1.0], [1.0, 1.0]]


@pytest.mark.parametrize("device", DEVICES)
def test_fake_quantize_on_device(device):
    x = torch.randn(4, 16, generator=torch.Generator().manual_seed(0)).to(device)
    x.requires_grad_(True)
    y = fake_quantize_dynamic(x, "int4", reduce_axes=-1, group_size=8)
    y.sum().backward()
    assert y.device.type == device and torch.equal(x.grad, torch.ones_like(x))


X = torch.ones(2, 4)


@pytest.mark.parametrize(
    ("fn", "exc", "fragment"),
    [
        (
            lambda: fake_quantize(
                X, torch.ones(()), torch.zeros((), dtype=torch.int8), fmt="float8_e4m3fn"
            ),
            ValueError,
            "zero of shape ()",
        ),
        (lambda: fake_quantize(X, torch.ones(()), fmt="uint3"), ValueError, "fmt='uint3'"),
        (lambda: fake_quantize(X, torch.ones(3)), ValueError, "scale of shape (3,)"),
        (lambda: fake_quantize(X.int(), torch.ones(())), TypeError, "x of dtype torch.int32"),
        (
            lambda: fake_quantize_dynamic(X, "float8_e5m2", symmetric=False),
            ValueError,
            "symmetric=False",
        ),
        (lambda: fake_quantize_dynamic(X, symmetric="yes"), TypeError, "symmetric='yes'"),
        (lambda: fake_quantize_dynamic(X, reduce_axes=3), ValueError, "reduce_axes=3"),
        (
            lambda: fake_quantize_dynamic(X, reduce_axes=0, group_size=-1),
            ValueError,
            "group_size=-1",
        ),
    ],
)
def test_errors_name_the_received_value(fn, exc, fragment):
    with pytest.raises(exc) as info:
        fn()
    assert fragment in str(info.value)
