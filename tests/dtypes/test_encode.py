"""mpq.dtypes.encode, bit for bit against an independent reference.

The reference knows nothing of exponents or mantissas: it lists every value of the format
(read through ml_dtypes), sorts them, and picks the nearest one by comparing with the exact
midpoints in float64, breaking ties towards the even code (e8m0: towards the larger value);
saturation is a clip to [min, max]. float32 / float64 / int32, too wide to list, are checked
against numpy's hardware casts and rint.
"""

from __future__ import annotations

import functools

import ml_dtypes
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from mpq import dtypes
from mpq.testing import strategies as st_mpq
from tests.dtypes._helpers import all_codes, bits_of, values_of

ALL = dtypes.names()
GRID = tuple(n for n in ALL if dtypes.get(n).bits <= 16)  # formats the reference can list
WIDE = ("float32", "float64", "int32")


@functools.cache
def grid(name: str) -> tuple[np.ndarray, np.ndarray, int | None]:
    """Sorted distinct finite values of a format, their codes (+0 for zero), the -0 code."""
    fmt = dtypes.get(name)
    every = all_codes(fmt)
    codes, values = bits_of(every, fmt), values_of(every)
    finite = np.isfinite(values)
    uniq, first = np.unique(values[finite], return_index=True)
    uniq_codes = codes[finite][first].astype(np.int64)
    uniq_codes[uniq == 0] = 0  # code 0 is +0 in every format that has a zero
    neg_zero = np.flatnonzero((values == 0) & np.signbit(values))
    return uniq, uniq_codes, (int(neg_zero[0]) if neg_zero.size else None)


def reference_encode(x: np.ndarray, name: str) -> np.ndarray:
    """Codes (as fmt.code_dtype) of the reference rounding of float64 ``x`` into ``name``."""
    fmt = dtypes.get(name)
    x = np.asarray(x, dtype=np.float64)
    nan = np.isnan(x)
    clipped = np.clip(np.where(nan, 0.0, x), fmt.min, fmt.max)
    if name in WIDE:
        if name == "int32":
            return np.rint(clipped).astype(np.int32).view(np.uint32)
        out = clipped.astype(fmt.numpy_dtype).view(fmt.code_dtype)  # hardware round-to-even
        return np.where(nan, fmt.code_dtype.type(fmt.nan_code), out)
    uniq, codes, neg_zero = grid(name)
    hi_i = np.clip(np.searchsorted(uniq, clipped, side="left"), 1, len(uniq) - 1)
    lo, hi = uniq[hi_i - 1], uniq[hi_i]
    mid = (lo + hi) / 2  # exact: neighbours have at most 12 significant bits here
    lo_code, hi_code = codes[hi_i - 1], codes[hi_i]
    # Ties go to the even code; e8m0 (ties="up") to the larger power of two.
    tie_pick_hi = (hi_code % 2 == 0) | (fmt.ties == "up")
    pick_hi = (clipped > mid) | ((clipped == mid) & tie_pick_hi)
    pick_hi |= clipped >= hi  # only when clipped is the largest value
    chosen = np.where(pick_hi, hi_code, lo_code)
    chosen = np.where(clipped <= uniq[0], codes[0], chosen)
    chosen_value = np.where(pick_hi, hi, lo)
    if neg_zero is not None:
        chosen = np.where((chosen_value == 0) & np.signbit(x), neg_zero, chosen)
    if fmt.has_nan:
        chosen = np.where(nan, fmt.nan_code, chosen)
    return chosen.astype(fmt.code_dtype)


def allowed(x: np.ndarray, fmt: dtypes.Format) -> np.ndarray:
    """Drop inputs that encode rejects: NaN without a NaN code, negatives for e8m0."""
    x = np.asarray(x)
    keep = np.ones(x.shape, dtype=bool)
    if not fmt.has_nan:
        keep &= ~np.isnan(x)
    if not fmt.is_signed:
        keep &= ~(x < 0)
    return x[keep]


@functools.cache
def edge_inputs(name: str) -> tuple[np.ndarray, np.ndarray]:
    """(float32, float64) inputs around every decision of ``name``: all its values, every
    midpoint, one float32 / float64 ulp either side, beyond max, tiny values, +-0, +-inf, NaN."""
    fmt = dtypes.get(name)
    special = np.array(
        [0.0, -0.0, np.inf, -np.inf, np.nan, 1e30, -1e30, 3.4e38, -3.4e38, 1e-300, -1e-300,
         5e-324, -5e-324, 2.0**-149, -(2.0**-149), 2.0**-127 * 1.5, 2.0**-126]
    )  # fmt: skip
    if name in WIDE:
        rng = np.random.default_rng(1)
        f32 = np.concatenate(
            [rng.standard_normal(4096) * 10.0 ** rng.integers(-40, 38, 4096), special]
        )
        base = rng.standard_normal(4096).astype(np.float32)
        up = np.nextafter(base, np.float32(np.inf))
        mids = (base.astype(np.float64) + up) / 2  # float32 ties, exact in float64
        f64 = np.concatenate([mids, np.nextafter(mids, np.inf), np.nextafter(mids, -np.inf)])
        f64 = np.concatenate([f64, [2.0**31 - 0.5, 2.0**31 + 0.5, -(2.0**31) - 0.5, 1e300]])
        with np.errstate(over="ignore"):
            return allowed(f32.astype(np.float32), fmt), allowed(f64, fmt)
    uniq, _, _ = grid(name)
    mids = (uniq[:-1] + uniq[1:]) / 2
    step = uniq[-1] - uniq[-2]
    beyond = np.array([fmt.max + step / 2, fmt.max + step, fmt.max * 4])
    tiny = (fmt.smallest_subnormal or 1.0) * np.array([0.25, 0.5, 0.75, 1.5])
    base = np.concatenate([uniq, mids, beyond, -beyond, tiny, -tiny, special])
    with np.errstate(over="ignore", under="ignore"):
        f32 = base.astype(np.float32)
    inf32 = np.float32(np.inf)
    f32 = np.concatenate([f32, np.nextafter(f32, inf32), np.nextafter(f32, -inf32)])
    f64 = np.concatenate([base, np.nextafter(mids, np.inf), np.nextafter(mids, -np.inf)])
    return allowed(f32, fmt), allowed(f64, fmt)


def check(x: np.ndarray, name: str) -> None:
    """encode(x) equals the reference for numpy input and for torch input, bit for bit."""
    fmt = dtypes.get(name)
    expected = reference_encode(values_of(x), name)
    got_numpy = dtypes.encode(x, fmt)
    assert got_numpy.dtype == fmt.numpy_dtype and got_numpy.shape == x.shape
    got_torch = dtypes.encode(torch.from_numpy(x), fmt)
    assert got_torch.dtype == fmt.container and tuple(got_torch.shape) == x.shape
    for got in (bits_of(got_numpy, fmt), bits_of(dtypes.to_numpy(got_torch, fmt), fmt)):
        bad = np.flatnonzero(got != expected)
        if bad.size:
            i = bad[0]
            pytest.fail(
                f"{name}: {bad.size} of {x.size} differ; first x={x.flat[i]!r} "
                f"got code {int(got.flat[i]):#x}, reference {int(expected.flat[i]):#x}"
            )


@pytest.mark.parametrize("name", ALL)
def test_encode_matches_reference_on_every_value_midpoint_and_edge(name):
    f32, f64 = edge_inputs(name)
    check(f32, name)
    check(f64, name)  # float64 ties nudged by one float64 ulp: no double rounding


@pytest.mark.parametrize("name", GRID)
def test_encode_is_identity_on_every_finite_code(name):
    fmt = dtypes.get(name)
    every = all_codes(fmt)
    codes, values = bits_of(every, fmt), values_of(every)
    keep = np.isfinite(values)  # (infinities saturate, NaN becomes the canonical NaN)
    out = bits_of(dtypes.encode(values[keep], fmt), fmt)
    np.testing.assert_array_equal(out, codes[keep])


@given(st.data())
def test_encode_matches_reference_on_drawn_float32(data):
    name = data.draw(st_mpq.format_names(), label="fmt")
    fmt = dtypes.get(name)
    values = data.draw(st.lists(st_mpq.float32_values(fmt), min_size=1, max_size=32))
    check(allowed(np.array(values, dtype=np.float32), fmt), name)


@given(st.data())
def test_encode_matches_reference_on_drawn_float32_aimed_at_all_formats(data):
    name = data.draw(st_mpq.format_names(), label="fmt")
    x = data.draw(st_mpq.float32_arrays(st_mpq.shapes(0, 2, max_side=16)))
    fmt = dtypes.get(name)
    x = np.asarray(np.where(np.isnan(x), 0.0, x), np.float32) if not fmt.has_nan else x
    x = np.asarray(np.abs(x)) if not fmt.is_signed else x
    check(x, name)


@given(st.data())
def test_encode_from_any_float_tensor_dtype(data):
    """Inputs of every torch float dtype (bf16, fp16, fp8, ...) round by their exact value."""
    src = data.draw(st_mpq.formats(kind="float", has_torch_dtype=True), label="src")
    dst = data.draw(st_mpq.formats(), label="dst")
    t = data.draw(st_mpq.tensors(src, st_mpq.shapes(1, 2), finite=not dst.has_nan))
    if not dst.is_signed:
        t = t.abs() if src.is_signed else t
    expected = reference_encode(values_of(dtypes.to_numpy(t, src)), dst.name)
    got = dtypes.to_numpy(dtypes.encode(t, dst), dst)
    np.testing.assert_array_equal(bits_of(got, dst), expected)


@pytest.mark.parametrize(
    "name",
    ["float16", "bfloat16", "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz"],
)
def test_encode_agrees_with_torch_casts_inside_the_range(name):
    """For finite values within +-max torch's casts are round-to-nearest-even too (encode relies
    on it for float32-or-narrower inputs; float64 inputs take the arithmetic path)."""
    fmt = dtypes.get(name)
    f32, _ = edge_inputs(name)
    x = torch.from_numpy(f32[np.isfinite(f32) & (np.abs(f32) <= fmt.max)])
    got = dtypes.encode(x, fmt).view(torch.uint8)
    assert torch.equal(got, x.to(fmt.torch_dtype).view(torch.uint8))


def test_e8m0_rounds_ties_up_like_torch_and_ml_dtypes_inside_its_range():
    fmt = dtypes.get("float8_e8m0fnu")
    f32, _ = edge_inputs(fmt.name)
    # From 2**-126 up: below it the float32 input is subnormal, and torch and ml_dtypes (which
    # round the bit pattern) send e.g. 1.0000002 * 2**-127 to 2**-126; mpq rounds the value.
    x = f32[np.isfinite(f32) & (f32 >= 2.0**-126) & (f32 <= fmt.max)]
    ours = bits_of(dtypes.encode(x, fmt), fmt)
    np.testing.assert_array_equal(ours, x.astype(ml_dtypes.float8_e8m0fnu).view(np.uint8))
    np.testing.assert_array_equal(
        ours, torch.from_numpy(x).to(torch.float8_e8m0fnu).view(torch.uint8).numpy()
    )
    halfway = np.array([1.5, 3.0, 6.0, 0.75], np.float32)  # ties between powers of two
    assert values_of(dtypes.encode(halfway, fmt)).tolist() == [2.0, 4.0, 8.0, 1.0]
    below_tie = np.array([1.0000002 * 2.0**-127, 1.4999998 * 2.0**-127], np.float32)
    assert values_of(dtypes.encode(below_tie, fmt)).tolist() == [2.0**-127, 2.0**-127]


@pytest.mark.parametrize("name", ALL)
def test_encode_saturates_overflow_and_infinity(name):
    fmt = dtypes.get(name)
    big = fmt.max * 1.5 if name != "float64" else np.inf
    x = np.array([np.inf, big, fmt.max], np.float64)
    if fmt.is_signed:
        x = np.concatenate([x, [-np.inf, -big, fmt.min]])
    expected = np.array([fmt.max] * 3 + ([fmt.min] * 3 if fmt.is_signed else []), np.float64)
    np.testing.assert_array_equal(values_of(dtypes.encode(x, fmt)), expected)
    x32 = np.array([np.inf, -np.inf] if fmt.is_signed else [np.inf], np.float32)
    t = dtypes.encode(torch.from_numpy(x32), fmt)
    np.testing.assert_array_equal(values_of(dtypes.to_numpy(t, fmt)), expected[[0, -1]][: x32.size])


@pytest.mark.parametrize("name", [n for n in ALL if dtypes.get(n).has_nan])
def test_encode_writes_the_canonical_nan(name):
    fmt = dtypes.get(name)
    nans = np.array([0x7FC00000, 0xFFC00000, 0x7F800001, 0xFFFFFFFF], np.uint32).view(np.float32)
    got = bits_of(dtypes.encode(nans, fmt), fmt)
    assert got.tolist() == [fmt.nan_code] * 4
    t = dtypes.encode(torch.from_numpy(nans).to(torch.float64), fmt)
    assert bits_of(dtypes.to_numpy(t, fmt), fmt).tolist() == [fmt.nan_code] * 4


@pytest.mark.parametrize("name", [n for n in ALL if not dtypes.get(n).has_nan])
def test_encode_rejects_nan_for_formats_without_nan(name):
    x = np.array([1.0, np.nan, np.nan], np.float32)
    with pytest.raises(ValueError, match=rf"{name} has no NaN.*Received: x=.* 2 NaN value"):
        dtypes.encode(x, name)
    with pytest.raises(ValueError, match=rf"{name} has no NaN.*Received: x=a torch.Tensor"):
        dtypes.encode(torch.from_numpy(x), name)


def test_e8m0_zero_and_tiny_go_to_the_smallest_value_and_negatives_raise():
    fmt = dtypes.get("float8_e8m0fnu")
    got = dtypes.encode(np.array([0.0, -0.0, 1e-45, 2.0**-128], np.float32), fmt)
    assert values_of(got).tolist() == [2.0**-127] * 4
    with pytest.raises(
        ValueError, match=r"float8_e8m0fnu is unsigned. Received: x=.*1 negative value"
    ):
        dtypes.encode(np.array([1.0, -1.0], np.float32), fmt)
    with pytest.raises(ValueError, match=r"unsigned.*Received: x=a torch.Tensor"):
        dtypes.encode(torch.tensor([-np.inf]), fmt)


def test_encode_signs_of_zero():
    x = np.array([-0.0, -1e-30, 0.0], np.float32)
    assert np.signbit(values_of(dtypes.encode(x, "float8_e4m3fn"))).tolist() == [True, True, False]
    fnuz = dtypes.encode(x, "float8_e4m3fnuz")  # no -0: the code 0x80 is NaN there
    assert bits_of(fnuz, dtypes.get("float8_e4m3fnuz")).tolist() == [0, 0, 0]
    assert values_of(dtypes.encode(x, "int4")).tolist() == [0.0, 0.0, 0.0]


def test_integer_encoding_rounds_half_to_even_and_saturates_without_wrapping():
    x = np.array([0.5, 1.5, 2.5, -2.5, 7.49, 7.5, 9.0, -8.5, -100.0], np.float32)
    assert values_of(dtypes.encode(x, "int4")).tolist() == [0, 2, 2, -2, 7, 7, 7, -8, -8]
    assert values_of(dtypes.encode(x, "uint4")).tolist() == [0, 2, 2, 0, 7, 8, 9, 0, 0]
    assert values_of(dtypes.encode(x * 20, "int8")).tolist() == [
        10, 30, 50, -50, 127, 127, 127, -128, -128,
    ]  # fmt: skip
    t = dtypes.encode(torch.from_numpy(x), "int4")
    assert t.dtype == torch.int8 and t.tolist() == [0, 2, 2, -2, 7, 7, 7, -8, -8]


@pytest.mark.parametrize("name", ["float16", "bfloat16", "float8_e4m3fn", "float8_e5m2fnuz"])
def test_both_rounding_paths_agree(name):
    """float32 inputs use the clamped torch cast, float64 inputs the float64 arithmetic."""
    f32, _ = edge_inputs(name)
    fmt = dtypes.get(name)
    by_cast = dtypes.encode(torch.from_numpy(f32), fmt)
    by_arithmetic = dtypes.encode(torch.from_numpy(f32).double(), fmt)
    assert torch.equal(by_cast.view(torch.uint8), by_arithmetic.view(torch.uint8))


@pytest.mark.parametrize(
    "name", [n for n in GRID if dtypes.get(n).kind == "float" and dtypes.get(n).bits <= 8]
)
def test_code_arithmetic_of_formats_torch_lacks(name):
    """The path that writes float6 / float4 codes (and e8m0 codes on a torch without
    float8_e8m0fnu) gives every finite code back from its value."""
    from mpq.dtypes._encode import _float_codes

    fmt = dtypes.get(name)
    codes = np.arange(2**fmt.bits, dtype=np.uint8)
    values = values_of(codes.view(fmt.numpy_dtype))
    finite = np.isfinite(values)
    got = _float_codes(torch.from_numpy(values[finite]), fmt).numpy()
    np.testing.assert_array_equal(got, codes[finite])


def test_encode_keeps_shape_device_and_container():
    x = torch.linspace(-10, 10, 24, dtype=torch.bfloat16).reshape(2, 3, 4)
    for name in ALL:
        fmt = dtypes.get(name)
        y = dtypes.encode(x.abs() if not fmt.is_signed else x, fmt)
        assert y.shape == x.shape and y.dtype == fmt.container and y.device == x.device
    scalar = dtypes.encode(np.float32(300.0), "float8_e4m3fn")
    assert scalar.shape == () and scalar.dtype == ml_dtypes.float8_e4m3fn
    assert dtypes.encode(torch.tensor(-3.7), "float4_e2m1fn").shape == ()
    from_bf16 = dtypes.encode(np.array([1.0, 3.0], ml_dtypes.bfloat16), "float4_e2m1fn")
    assert values_of(from_bf16).tolist() == [1.0, 3.0]
    requires_grad = torch.ones(3, requires_grad=True)
    assert dtypes.encode(requires_grad, "float8_e5m2").requires_grad is False


def test_encode_rejects_bad_inputs():
    with pytest.raises(TypeError, match=r"Received: x=\[1.0\] \(of type list\)"):
        dtypes.encode([1.0], "float8_e4m3fn")
    with pytest.raises(TypeError, match=r"floating-point tensor. Received: x=a torch.Tensor of "
                       r"dtype torch.int64"):  # fmt: skip
        dtypes.encode(torch.arange(3), "int8")
    with pytest.raises(TypeError, match=r"Received: x=a numpy array of dtype int32"):
        dtypes.encode(np.arange(3, dtype=np.int32), "int8")
    with pytest.raises(TypeError, match=r"Received: x=a numpy array of dtype int4"):
        dtypes.encode(np.arange(3).astype(ml_dtypes.int4), "int8")
    with pytest.raises(ValueError, match=r"Received: identifier='fp4'"):
        dtypes.encode(np.ones(2, np.float32), "fp4")


def test_float_only_fields_of_an_integer_format_raise():
    # The float-grid helpers refuse a format without a float grid (or without a NaN code)
    # instead of computing with None.
    from mpq.dtypes._encode import _grid, _nan_code

    with pytest.raises(
        ValueError, match=r"Expected a float format\. Received: fmt=<Format \"int8\">"
    ):
        _grid(dtypes.get("int8"))
    with pytest.raises(
        ValueError,
        match=r"Expected a format with a NaN code\. Received: fmt=<Format \"float4_e2m1fn\">",
    ):
        _nan_code(dtypes.get("float4_e2m1fn"))
