"""mpq.testing: tolerances, assert_close, sqnr, strategies, device markers, hypothesis profiles."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
import torch
from hypothesis import find, given, settings
from hypothesis import strategies as st

from mpq import dtypes
from mpq.testing import (
    HYPOTHESIS_PROFILES,
    TOLERANCES,
    assert_close,
    device,
    load_hypothesis_profile,
    register_hypothesis_profiles,
    sqnr,
    tolerance,
)
from mpq.testing import strategies as st_mpq

# ---------------------------------------------------------------------------------------------
# tolerance
# ---------------------------------------------------------------------------------------------


def test_tolerance_table_covers_every_format():
    assert set(TOLERANCES) == set(dtypes.names())


@pytest.mark.parametrize("name", dtypes.names("float"))
def test_tolerance_follows_eps_and_sqrt_k(name):
    fmt = dtypes.get(name)
    tol = TOLERANCES[name]
    assert tolerance(name) == (tol.rtol_eps * fmt.eps, tol.atol_eps * fmt.eps)
    rtol, atol = tolerance(fmt, k=256)
    assert rtol == tol.rtol_eps * fmt.eps
    assert atol == pytest.approx(16 * tol.atol_eps * fmt.eps, rel=1e-15)
    assert tolerance(fmt.numpy_dtype, k=1) == tolerance(name)


def test_tolerance_values_and_exact_integers():
    assert tolerance("bfloat16", k=256) == (2**-6, 0.5)
    assert tolerance("float8_e5m2fnuz") == (0.5, 1.0)  # from eps 0.25, not torch's 0.125
    assert tolerance(torch.float32) == (4 * 2**-23, 32 * 2**-23)
    for name in dtypes.names("int") + dtypes.names("uint"):
        assert tolerance(name, k=4096) == (0.0, 0.0)


@pytest.mark.parametrize(
    ("k", "error", "shown"),
    [
        (0, ValueError, "k=0"),
        (-3, ValueError, "k=-3"),
        (2.0, TypeError, r"k=2.0 \(of type float\)"),
        (True, TypeError, r"k=True \(of type bool\)"),
        ("8", TypeError, r"k='8' \(of type str\)"),
    ],
)
def test_tolerance_rejects_bad_k(k, error, shown):
    with pytest.raises(error, match=rf"Received: {shown}"):
        tolerance("float16", k=k)


def test_tolerance_rejects_bad_format():
    with pytest.raises(ValueError, match=r"Received: identifier='bf16'"):
        tolerance("bf16")
    with pytest.raises(TypeError, match=r"Received: identifier=16"):
        tolerance(16)


@pytest.mark.parametrize(
    ("dtype", "name"),
    [(torch.bfloat16, "bfloat16"), (torch.float16, "float16"), (torch.float32, "float32")],
)
@pytest.mark.parametrize("k", [16, 256, 4096])
def test_tolerance_holds_for_real_matmuls_and_catches_a_small_error(dtype, name, k):
    """The calibration behind the table, as a test: torch's own matmul in each dtype on unit
    normal data passes; the same result off by 3 tolerances at one element fails."""
    gen = torch.Generator().manual_seed(k)
    a = torch.randn(64, k, generator=gen)
    b = torch.randn(k, 48, generator=gen)
    expected = a.double() @ b.double()
    actual = a.to(dtype) @ b.to(dtype)
    assert_close(actual, expected, name, k=k)
    rtol, atol = tolerance(name, k=k)
    wrong = actual.double().clone()
    wrong[5, 7] = expected[5, 7] + 3 * (atol + rtol * abs(expected[5, 7]))
    with pytest.raises(AssertionError, match=r"Worst at index \(5, 7\)"):
        assert_close(wrong, expected, name, k=k)


@pytest.mark.parametrize("name", ["float8_e4m3fn", "float8_e5m2"])
def test_tolerance_holds_for_simulated_fp8_matmuls(name):
    """fp8 inputs, exact products and float32 accumulation, output rounded to fp8."""
    fmt = dtypes.get(name)
    gen = torch.Generator().manual_seed(0)
    for k in (32, 1024):
        a, b = torch.randn(64, k, generator=gen), torch.randn(k, 64, generator=gen)
        a_lp, b_lp = dtypes.encode(a, fmt), dtypes.encode(b, fmt)
        out = dtypes.encode(a_lp.float() @ b_lp.float(), fmt)
        assert_close(out, a.double() @ b.double(), fmt, k=k)


# ---------------------------------------------------------------------------------------------
# assert_close
# ---------------------------------------------------------------------------------------------


def test_assert_close_accepts_every_kind_of_input():
    x = np.array([1.0, -2.5, 0.0], np.float32)
    assert_close(x, x.astype(np.float64), "float32")
    assert_close(torch.from_numpy(x), x, "float32")
    assert_close(torch.from_numpy(x).to(torch.bfloat16), x, "bfloat16")
    assert_close(torch.from_numpy(x).to(torch.float8_e4m3fn), x, "float8_e4m3fn")
    assert_close(x.astype(ml_dtypes.bfloat16), x, "bfloat16")
    assert_close(x.astype(ml_dtypes.float8_e5m2), torch.from_numpy(x), "float8_e5m2")
    assert_close(torch.tensor([3], dtype=torch.int8), np.array([3]), "int8")
    assert_close(1.0, np.float64(1.0), "float64")
    assert_close(torch.ones(2, requires_grad=True), torch.ones(2), "float32")


def test_assert_close_reports_the_worst_element():
    expected = np.zeros((3, 4))
    actual = expected.copy()
    actual[1, 2] = 0.5  # the worst
    actual[2, 3] = 0.1
    with pytest.raises(AssertionError) as info:
        assert_close(actual, expected, "bfloat16", msg="layer out")
    text = str(info.value)
    assert text.startswith("layer out: not close: 2 of 12 elements")
    assert "Worst at index (1, 2): actual=0.5, expected=0.0" in text
    assert "abs error=0.5" in text and "rel error=inf" in text
    assert "fmt=bfloat16" in text


def test_assert_close_rtol_is_relative_to_expected():
    rtol, atol = tolerance("float16")
    expected = np.array([1000.0])
    assert_close(expected * (1 + 0.9 * rtol), expected, "float16")
    with pytest.raises(AssertionError, match="rel error"):
        assert_close(expected * (1 + 1.1 * rtol) + atol, expected, "float16")


def test_assert_close_explicit_tolerances_override():
    assert_close(np.array([1.1]), np.array([1.0]), "float32", rtol=0.0, atol=0.11)
    with pytest.raises(AssertionError):
        assert_close(np.array([1.1]), np.array([1.0]), "float32", rtol=0.0, atol=0.09)
    assert_close(np.array([1.1]), np.array([1.0]), None, rtol=0.2, atol=0.0)
    with pytest.raises(AssertionError, match="beyond tolerance"):
        assert_close(np.array([2]), np.array([3]), "int8")  # integer formats are exact


def test_assert_close_shapes_nan_and_inf():
    with pytest.raises(AssertionError, match=r"shapes differ: actual \(3,\) vs expected \(1, 3\)"):
        assert_close(np.zeros(3), np.zeros((1, 3)), "float32")
    nan = np.array([1.0, np.nan])
    assert_close(nan, nan.copy(), "float32")
    with pytest.raises(AssertionError, match=r"NaN positions differ .* index \(1,\)"):
        assert_close(np.array([1.0, 2.0]), nan, "float32")
    with pytest.raises(AssertionError, match=r"NaN positions differ"):
        assert_close(nan, np.array([1.0, 2.0]), "float32")
    inf = np.array([np.inf, -np.inf])
    assert_close(inf, inf.copy(), "float32")
    with pytest.raises(AssertionError, match=r"infinities differ .* index \(1,\)"):
        assert_close(np.array([np.inf, np.inf]), inf, "float32")
    with pytest.raises(AssertionError, match=r"infinities differ"):
        assert_close(np.array([1e300, 0.0]), np.array([np.inf, 0.0]), "float32")
    assert_close(np.zeros((0, 3)), np.zeros((0, 3)), "float32")


def test_assert_close_rejects_bad_arguments():
    with pytest.raises(TypeError, match=r"Received: actual=\[1.0\] \(of type list\)"):
        assert_close([1.0], np.ones(1), "float32")
    with pytest.raises(TypeError, match=r"Received: expected='1' \(of type str\)"):
        assert_close(np.ones(1), "1", "float32")
    with pytest.raises(TypeError, match=r"Received: actual of dtype complex64"):
        assert_close(np.ones(1, np.complex64), np.ones(1), "float32")
    with pytest.raises(TypeError, match=r"Received: fmt=None with rtol=None"):
        assert_close(np.ones(1), np.ones(1), None)
    with pytest.raises(ValueError, match=r"Received: rtol=-0.1"):
        assert_close(np.ones(1), np.ones(1), "float32", rtol=-0.1)
    with pytest.raises(ValueError, match=r"Received: atol=nan"):
        assert_close(np.ones(1), np.ones(1), "float32", atol=math.nan)
    with pytest.raises(ValueError, match=r"Received: identifier='fp32'"):
        assert_close(np.ones(1), np.ones(1), "fp32")
    with pytest.raises(TypeError, match=r"Received: msg=3 \(of type int\)"):
        assert_close(np.ones(1), np.ones(1), "float32", msg=3)


@given(
    st_mpq.formats(kind="float", has_torch_dtype=True).flatmap(
        lambda f: st.tuples(st.just(f), st_mpq.tensors(f, st_mpq.shapes(1, 2), finite=True))
    )
)
def test_assert_close_is_reflexive_on_every_format(fmt_and_tensor):
    fmt, t = fmt_and_tensor
    assert_close(t, t.clone(), fmt)
    assert_close(t, dtypes.to_numpy(t, fmt), fmt, rtol=0.0, atol=0.0)


# ---------------------------------------------------------------------------------------------
# sqnr
# ---------------------------------------------------------------------------------------------


def test_sqnr_values():
    ref = np.array([1.0, 1.0])
    assert sqnr(ref, np.array([1.0, 1.1])) == pytest.approx(10 * math.log10(2 / 0.01))
    assert sqnr(ref, ref.copy()) == math.inf
    assert sqnr(np.zeros(3), np.ones(3)) == -math.inf
    assert sqnr(np.zeros(3), np.zeros(3)) == math.inf
    x = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    noisy = x + 0.01 * torch.randn(1000, generator=torch.Generator().manual_seed(1))
    assert 35 < sqnr(x, noisy) < 45  # about 40 dB for noise 1/100 of the signal
    big = np.array([1e200, -1e200])  # squares overflow float64 without normalisation
    assert sqnr(big, big * (1 + 1e-3)) == pytest.approx(60.0)
    assert isinstance(sqnr(x, noisy.to(torch.bfloat16)), float)


def test_sqnr_of_rounding_matches_the_format_precision():
    """Rounding unit normal data to bf16 gives about 6.02 * 8 + 5 dB; fp8 e4m3 about 31 dB."""
    x = torch.randn(100_000, generator=torch.Generator().manual_seed(0))
    assert 50 < sqnr(x, x.to(torch.bfloat16)) < 56
    assert 28 < sqnr(x, dtypes.encode(x, "float8_e4m3fn")) < 34


def test_sqnr_rejects_bad_inputs():
    with pytest.raises(ValueError, match=r"Received: reference of shape \(2,\), x of shape \(3,\)"):
        sqnr(np.ones(2), np.ones(3))
    with pytest.raises(ValueError, match=r"Received: reference of shape \(0,\)"):
        sqnr(np.ones(0), np.ones(0))
    with pytest.raises(ValueError, match=r"Received: x with 1 NaN/inf value"):
        sqnr(np.ones(2), np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match=r"Received: reference with 1 NaN/inf value"):
        sqnr(np.array([np.inf, 1.0]), np.ones(2))
    with pytest.raises(TypeError, match=r"Received: reference=\[1, 2\] \(of type list\)"):
        sqnr([1, 2], np.ones(2))


# ---------------------------------------------------------------------------------------------
# strategies
# ---------------------------------------------------------------------------------------------


@given(st.data())
def test_format_names_respect_filters(data):
    kind = data.draw(st.sampled_from([None, "float", "int", "uint"]))
    max_bits = data.draw(st.sampled_from([None, 8, 16]))
    has_torch = data.draw(st.sampled_from([None, True, False]))
    try:
        strategy = st_mpq.format_names(kind, max_bits=max_bits, has_torch_dtype=has_torch)
    except ValueError:
        return  # e.g. uint formats without a torch dtype of more than 8 bits: none
    fmt = dtypes.get(data.draw(strategy))
    assert kind is None or fmt.kind == kind
    assert max_bits is None or fmt.bits <= max_bits
    assert has_torch is None or (fmt.torch_dtype is not None) == has_torch


def test_format_names_reach_every_format_and_reject_empty_filters():
    found = {find(st_mpq.format_names(), lambda n, want=n: n == want) for n in dtypes.names()}
    assert found == set(dtypes.names())
    assert find(st_mpq.formats(min_bits=32, kind="int"), lambda f: True).name == "int32"
    with pytest.raises(ValueError, match=r"Received: kind='float', max_bits=2"):
        st_mpq.format_names("float", max_bits=2)
    with pytest.raises(ValueError, match=r"Received: kind='real'"):
        st_mpq.format_names("real")


@given(st_mpq.shapes(min_dims=2, max_dims=4, min_side=0, max_side=3))
def test_shapes_respect_bounds(shape):
    assert 2 <= len(shape) <= 4 and all(0 <= s <= 3 for s in shape)


@given(st.data())
def test_arrays_have_the_format_shape_and_options(data):
    fmt = data.draw(st_mpq.formats())
    shape = data.draw(st_mpq.shapes(0, 3))
    finite = data.draw(st.booleans())
    a = data.draw(st_mpq.arrays(fmt, shape, finite=finite))
    assert a.dtype == fmt.numpy_dtype and a.shape == shape
    values = dtypes.decode(a, dtype="float64")
    if finite:
        assert np.isfinite(values).all()
    b = data.draw(st_mpq.arrays(fmt, 5, max_abs=2.0, allow_subnormal=False))
    values = dtypes.decode(b, dtype="float64")
    assert np.isfinite(values).all() and (np.abs(values) <= 2.0).all()
    if fmt.smallest_normal is not None:
        assert not ((values != 0) & (np.abs(values) < fmt.smallest_normal)).any()


@pytest.mark.parametrize("name", ["bfloat16", "float8_e4m3fn", "float8_e5m2fnuz", "float6_e3m2fn"])
def test_arrays_can_draw_special_codes(name):
    fmt = dtypes.get(name)

    def has(pred):
        return find(st_mpq.arrays(fmt, 4), lambda a: bool(pred(dtypes.decode(a, dtype="float64"))))

    if fmt.has_nan:
        has(lambda v: np.isnan(v).any())
    has(lambda v: (v == fmt.max).any())
    has(lambda v: ((v != 0) & (np.abs(v) < fmt.smallest_normal)).any())
    if fmt.has_negative_zero:
        has(lambda v: ((v == 0) & np.signbit(v)).any())


@given(st_mpq.tensors("int4", (3, 2)), st_mpq.tensors("float4_e2m1fn", 7))
def test_tensors_use_the_container(t_int4, t_fp4):
    assert t_int4.dtype == torch.int8 and t_int4.shape == (3, 2)
    assert int(t_int4.min()) >= -8 and int(t_int4.max()) <= 7
    assert t_fp4.dtype == torch.uint8 and int(t_fp4.max()) <= 15


def test_arrays_reject_bad_options():
    with pytest.raises(TypeError, match=r"Received: shape='3x4' \(of type str\)"):
        st_mpq.arrays("float32", "3x4")
    with pytest.raises(ValueError, match=r"Received: max_abs=-1.0"):
        st_mpq.arrays("float32", 3, max_abs=-1.0)
    with pytest.raises(
        ValueError, match=r"Received: finite=False, allow_subnormal=True, max_abs=2.9"
    ):
        st_mpq.arrays("float8_e8m0fnu", 3, max_abs=2.0**-128)  # below e8m0's smallest value
    with pytest.raises(ValueError, match=r"Received: identifier='fp8'"):
        st_mpq.arrays("fp8", 3)


@given(st_mpq.float32_values())
def test_float32_values_are_exact_float32(v):
    assert math.isnan(v) or float(np.float32(v)) == v


def test_float32_values_hit_ties_subnormals_and_overflow():
    fmt = dtypes.get("float8_e4m3fn")
    find(st_mpq.float32_values(fmt), lambda v: v == (416.0 + 448.0) / 2)  # tie below max
    find(st_mpq.float32_values(fmt), lambda v: v == 2.0**-10)  # half the smallest subnormal
    find(st_mpq.float32_values(fmt), lambda v: 448 < v < math.inf)
    find(st_mpq.float32_values(), lambda v: 0 < v < 2.0**-126)  # float32 subnormal
    find(st_mpq.float32_values(allow_nan=False), lambda v: v == -math.inf)


@given(st_mpq.float32_values(allow_nan=False, allow_infinity=False))
def test_float32_values_can_exclude_nan_and_inf(v):
    assert math.isfinite(v)


# ---------------------------------------------------------------------------------------------
# device markers and hypothesis profiles
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "marker",
    [device.requires_cuda, device.requires_sm89, device.requires_triton, device.interpreter],
)
def test_markers_are_skipifs_with_a_reason(marker):
    assert marker.mark.name == "skipif"
    assert len(marker.mark.kwargs["reason"]) > 10


def test_marker_conditions_match_the_machine():
    assert device.requires_cuda.mark.args[0] == (not torch.cuda.is_available())
    assert device.has_triton() == (device.requires_triton.mark.args[0] is False)
    if not torch.cuda.is_available():
        assert device.cuda_capability() is None
        assert device.requires_sm89.mark.args[0] is True


def test_interpreter_marker_follows_the_environment(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert device.triton_interpret_enabled()
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert not device.triton_interpret_enabled()


def test_hypothesis_profiles_register_without_loading():
    register_hypothesis_profiles()
    ci = settings.get_profile("ci")
    assert ci.derandomize and ci.deadline is None and ci.print_blob and ci.database is None
    assert ci.max_examples == HYPOTHESIS_PROFILES["ci"]["max_examples"] <= 100
    dev = settings.get_profile("dev")
    assert not dev.derandomize and dev.deadline is None
    with pytest.raises(ValueError, match=r"Received: name='nightly'"):
        load_hypothesis_profile("nightly")


def test_importing_mpq_testing_loads_no_profile_and_the_choice_follows_the_environment():
    code = """
import os, hypothesis, mpq.testing, mpq.testing.strategies
current = hypothesis.settings.get_current_profile_name
print(current())
mpq.testing.register_hypothesis_profiles()
print(current())
for env in ({}, {"CI": "true"}, {"HYPOTHESIS_PROFILE": "thorough", "CI": "true"}):
    os.environ.update(env)
    name = mpq.testing.load_hypothesis_profile()
    print(name, hypothesis.settings.default.max_examples, hypothesis.settings.default.derandomize)
"""
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "HYPOTHESIS_PROFILE")}
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        cwd=Path(__file__).resolve().parents[2],
        check=True,
    )
    assert out.stdout.split("\n") == [
        "default",
        "default",
        "dev 100 False",
        "ci 50 True",
        "thorough 1000 False",
        "",
    ]
