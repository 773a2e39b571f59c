"""mpq.quantizers float8: casts bit-exact against ml_dtypes, scale/amax recurrence step by step."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mpq.quantizers import (
    compute_amax,
    compute_float8_scale,
    delayed_scaling_update,
    dequantize_float8,
    float8_max,
    quantize_dequantize,
    quantize_float8,
    update_amax_history,
)

SETTINGS = settings(max_examples=80, deadline=None)
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
FORMATS = {
    "float8_e4m3fn": (torch.float8_e4m3fn, ml_dtypes.float8_e4m3fn),
    "float8_e5m2": (torch.float8_e5m2, ml_dtypes.float8_e5m2),
    "float8_e4m3fnuz": (torch.float8_e4m3fnuz, ml_dtypes.float8_e4m3fnuz),
    "float8_e5m2fnuz": (torch.float8_e5m2fnuz, ml_dtypes.float8_e5m2fnuz),
}
OUT_DTYPES = {
    torch.float32: np.float32,
    torch.float16: np.float16,
    torch.bfloat16: ml_dtypes.bfloat16,
}


def floats32(lo, hi):
    return st.floats(float(np.float32(lo)), float(np.float32(hi)), width=32)


def div32(a, b):
    """IEEE float32 division (correctly rounded via float64); overflow gives +-inf, as in torch."""
    with np.errstate(over="ignore"):
        return (np.asarray(a, np.float64) / np.asarray(b, np.float64)).astype(np.float32)


def ref_quantize(x32, scale32, fmt):
    """numpy/ml_dtypes: float32 division, explicit clip to +-max, ml_dtypes round-to-nearest-even."""
    fmax = float(ml_dtypes.finfo(FORMATS[fmt][1]).max)
    v = np.clip(div32(x32, scale32), -fmax, fmax)
    return v.astype(FORMATS[fmt][1])


def same_codes(got_fp8, ref_fp8):
    """Equal bit patterns, except that any NaN encoding matches any NaN encoding."""
    got = got_fp8.cpu().view(torch.uint8).numpy()
    ref = ref_fp8.view(np.uint8)
    got_nan = np.isnan(got_fp8.cpu().float().numpy())
    ref_nan = np.isnan(ref.view(ref_fp8.dtype).astype(np.float32))
    np.testing.assert_array_equal(got_nan, ref_nan)
    np.testing.assert_array_equal(got[~got_nan], ref[~ref_nan])


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_float8_max_matches_ml_dtypes_and_torch(fmt):
    torch_dtype, np_dtype = FORMATS[fmt]
    assert float8_max(fmt) == float(ml_dtypes.finfo(np_dtype).max)
    assert float8_max(torch_dtype) == float(torch.finfo(torch_dtype).max)


values = st.one_of(
    floats32(-1e6, 1e6),
    st.floats(width=32, allow_subnormal=True, allow_nan=False, allow_infinity=False),
    floats32(-1e-6, 1e-6),  # float8 subnormals / flush to zero after scaling
    st.just(0.0),
    st.just(-0.0),
)


@st.composite
def fp8_case(draw):
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=8))
    x = draw(hnp.arrays(np.float32, shape, elements=values))
    per_row = draw(st.booleans())
    scale_shape = (*shape[:-1], 1) if per_row else ()
    scales = floats32(1e-8, 1e8)
    scale = draw(hnp.arrays(np.float32, scale_shape, elements=scales))
    return x, scale, draw(st.sampled_from(list(FORMATS)))


@SETTINGS
@given(c=fp8_case())
def test_quantize_float8_matches_ml_dtypes(c):
    x, scale, fmt = c
    q = quantize_float8(torch.from_numpy(x), torch.from_numpy(scale), fmt)
    assert q.dtype == FORMATS[fmt][0] and q.shape == x.shape
    same_codes(q, ref_quantize(x, scale, fmt))


@SETTINGS
@given(c=fp8_case(), out=st.sampled_from(list(OUT_DTYPES)))
def test_quantize_dequantize_matches_reference(c, out):
    x, scale, fmt = c
    xt = torch.from_numpy(x).to(out)
    got = quantize_dequantize(xt, torch.from_numpy(scale), fmt)
    assert got.dtype == out
    x32 = xt.float().numpy()
    ref = (ref_quantize(x32, scale, fmt).astype(np.float64) * scale.astype(np.float64)).astype(
        np.float32
    )
    with np.errstate(over="ignore"):
        ref = ref.astype(OUT_DTYPES[out]).astype(np.float32)
    np.testing.assert_array_equal(got.float().numpy(), ref)


def test_saturation_is_explicit_for_overflow_and_infinities():
    x = torch.tensor([1e6, -1e6, float("inf"), -float("inf"), 464.0, 465.0, float("nan")])
    q = quantize_float8(x, torch.tensor(1.0), "float8_e4m3fn").float()
    assert q[:6].tolist() == [448.0, -448.0, 448.0, -448.0, 448.0, 448.0]
    assert torch.isnan(q[6])
    q = quantize_float8(torch.tensor([1e9, -float("inf")]), torch.tensor(1.0), "float8_e5m2")
    assert q.float().tolist() == [57344.0, -57344.0]  # e5m2 has inf but saturates here


@pytest.mark.parametrize("device", DEVICES)
def test_quantize_dequantize_on_device(device):
    x = torch.randn(16, 32, generator=torch.Generator().manual_seed(0)) * 100
    scale = torch.tensor(0.125)
    got = quantize_dequantize(x.to(device), scale.to(device), "float8_e4m3fn")
    ref = ref_quantize(x.numpy(), np.float32(0.125), "float8_e4m3fn").astype(np.float32) * 0.125
    np.testing.assert_array_equal(got.cpu().numpy(), ref)


def test_dequantize_float8():
    q = torch.tensor([2.0, -3.0, 448.0]).to(torch.float8_e4m3fn)
    assert dequantize_float8(q, torch.tensor(0.5)).tolist() == [1.0, -1.5, 224.0]
    out = dequantize_float8(q, torch.tensor(3.0), torch.bfloat16)
    assert out.dtype == torch.bfloat16 and out.float().tolist() == [6.0, -9.0, 1344.0]


# ---------------------------------------------------------------------------------------------
# Scale update and amax history


def ref_scale(amax, scale, fmt, margin):
    fmax = float(ml_dtypes.finfo(FORMATS[fmt][1]).max)
    a = np.float32(amax)
    with np.errstate(over="ignore"):
        scaled = np.float32(np.float64(a) * 2.0**margin)
        new = div32(scaled, fmax)
    ok = np.isfinite(a) and a > 0 and np.isfinite(new) and new > 0
    return np.float32(new) if ok else np.float32(scale)


amaxes = st.one_of(
    st.floats(width=32, allow_subnormal=True),  # includes 0, nan, +-inf, negatives
    floats32(1e-3, 1e5),
    st.just(0.0),
)


@SETTINGS
@given(
    amax=amaxes,
    scale=floats32(1e-6, 1e6),
    fmt=st.sampled_from(list(FORMATS)),
    margin=st.integers(-8, 8),
)
def test_compute_float8_scale_matches_reference(amax, scale, fmt, margin):
    got = compute_float8_scale(torch.tensor(amax), torch.tensor(scale), fmt, margin)
    assert got.dtype == torch.float32
    assert np.float32(got.item()) == ref_scale(amax, scale, fmt, margin)


def test_compute_float8_scale_examples():
    e4m3 = "float8_e4m3fn"
    assert compute_float8_scale(torch.tensor(896.0), torch.tensor(1.0), e4m3).item() == 2.0
    assert compute_float8_scale(torch.tensor(896.0), torch.tensor(1.0), e4m3, 1).item() == 4.0
    for bad in (0.0, -1.0, float("inf"), float("nan")):  # keep the old scale
        assert compute_float8_scale(torch.tensor(bad), torch.tensor(3.0), e4m3).item() == 3.0
    # new scale underflows to 0 / overflows to inf: keep the old scale
    assert compute_float8_scale(torch.tensor(1e-45), torch.tensor(3.0), e4m3).item() == 3.0
    assert compute_float8_scale(torch.tensor(3e38), torch.tensor(3.0), e4m3, 100).item() == 3.0
    # elementwise on vectors
    got = compute_float8_scale(torch.tensor([448.0, 0.0]), torch.tensor([5.0, 5.0]), e4m3)
    assert got.tolist() == [1.0, 5.0]


def test_update_amax_history_rolls_and_inserts_at_zero():
    h = torch.tensor([2.0, 5.0, 1.0])
    assert update_amax_history(h, torch.tensor([-4.0, 3.0])).tolist() == [4.0, 2.0, 5.0]
    assert h.tolist() == [2.0, 5.0, 1.0]  # pure
    assert update_amax_history(torch.tensor([9.0]), torch.tensor([[0.5]])).tolist() == [0.5]
    bf = update_amax_history(torch.zeros(2, dtype=torch.bfloat16), torch.tensor([3.0]))
    assert bf.dtype == torch.bfloat16 and bf.tolist() == [3.0, 0.0]
    assert compute_amax(torch.tensor([1.0, -3.0], dtype=torch.bfloat16)).dtype == torch.float32


def test_delayed_scaling_recurrence_three_steps_by_hand():
    """e4m3fn, history length 2, s0 = 1, H0 = [0, 0]; y_t uses s_{t-1} (delayed scaling)."""
    fmt = "float8_e4m3fn"
    h, s = torch.zeros(2), torch.tensor(1.0)
    xs = [torch.tensor([896.0, -10.0]), torch.tensor([100.0, 3.0]), torch.tensor([0.5, -7.0])]
    expected = [
        # y_t              H_t             s_t
        ([448.0, -10.0], [896.0, 0.0], 2.0),  # 896 saturates; s1 = 896 / 448
        ([96.0, 3.0], [100.0, 896.0], 2.0),  # 100/2 = 50 -> 48 (tie to even); max(H2) = 896
        ([0.5, -7.0], [7.0, 100.0], float(np.float32(100.0 / 448.0))),  # 896 left the window
    ]
    for x, (y_exp, h_exp, s_exp) in zip(xs, expected, strict=True):
        y = quantize_dequantize(x, s, fmt)
        h, s = delayed_scaling_update(x, h, s, fmt)
        assert y.tolist() == y_exp
        assert h.tolist() == h_exp
        assert s.item() == s_exp
    # An all-zero step records 0 but the max over the window keeps the scale.
    h, s2 = delayed_scaling_update(torch.zeros(3), torch.zeros(1), s, fmt)
    assert h.tolist() == [0.0] and s2.item() == s.item()


@pytest.mark.parametrize(
    ("fn", "exc", "fragment"),
    [
        (
            lambda: quantize_float8(torch.ones(2), torch.tensor(1.0), "int8"),
            ValueError,
            "fmt='int8'",
        ),
        (lambda: quantize_float8(torch.ones(2), 1.0, "float8_e5m2"), TypeError, "scale=1.0"),
        (
            lambda: quantize_float8(torch.ones(2, 3), torch.ones(2), "float8_e5m2"),
            ValueError,
            "scale of shape (2,)",
        ),
        (
            lambda: quantize_float8(torch.ones(2, dtype=torch.int8), torch.ones(()), "float8_e5m2"),
            TypeError,
            "x of dtype torch.int8",
        ),
        (
            lambda: dequantize_float8(torch.ones(2), torch.tensor(1.0)),
            TypeError,
            "q of dtype torch.float32",
        ),
        (
            lambda: compute_float8_scale(
                torch.tensor(1.0), torch.tensor(1.0), "float8_e4m3fn", 1.5
            ),
            TypeError,
            "margin=1.5",
        ),
        (
            lambda: compute_float8_scale(
                torch.tensor(1.0), torch.tensor(1.0), "float8_e4m3fn", 200
            ),
            ValueError,
            "margin=200",
        ),
        (
            lambda: compute_float8_scale(1.0, torch.tensor(1.0), "float8_e4m3fn"),
            TypeError,
            "amax=1.0 (of type float)",
        ),
        (
            lambda: compute_float8_scale(torch.tensor(1.0), torch.tensor(1.0), torch.float16),
            ValueError,
            "fmt=torch.float16",
        ),
        (
            lambda: update_amax_history(torch.zeros(2, 2), torch.ones(3)),
            ValueError,
            "amax_history of shape (2, 2)",
        ),
        (
            lambda: update_amax_history(torch.zeros(0), torch.ones(3)),
            ValueError,
            "amax_history of shape (0,)",
        ),
        (lambda: update_amax_history(torch.zeros(2), [1.0]), TypeError, "x=[1.0] (of type list)"),
        (lambda: compute_amax(torch.zeros(0)), ValueError, "x of shape (0,)"),
    ],
)
def test_errors_name_the_received_value(fn, exc, fragment):
    with pytest.raises(exc) as info:
        fn()
    assert fragment in str(info.value)
