"""The CPU fast path (mpq.kernels._cpu) against the reference oracle.

int8 accumulation is exact on both, so int8 results are compared bit for bit (same epilogue
code on the same int32 accumulator); float8 and int4 within float32 tolerances."""

from __future__ import annotations

from unittest import mock

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import mpq.kernels as K
from mpq.kernels import _checks, _cpu, reference
from tests.kernels._helpers import assert_close, k_major, pack_int4, rand

pytestmark = pytest.mark.kernels

# Reductions around the float32-exact chunk (1024) and K = 1 (torch._int_mm's gap).
K_SIZES = st.one_of(st.integers(1, 48), st.sampled_from([1023, 1024, 1025, 2049]))
ACTS = st.sampled_from([None, "relu", "gelu", "silu"])
OUTS = st.sampled_from([torch.float32, torch.bfloat16, torch.float16])


def both(op, *args, **kwargs):
    with K.use_backend("cpu"):
        got = getattr(K, op)(*args, **kwargs)
    with K.use_backend("reference"):
        want = getattr(K, op)(*args, **kwargs)
    return got, want


def a_operand(shape, dtype, gen, strided: bool) -> torch.Tensor:
    """Row-major ``a``; ``strided``: a column slice of a wider tensor (row stride > K)."""
    if not strided:
        return rand(shape, dtype, gen)
    wide = rand((*shape[:-1], shape[-1] + 3), dtype, gen)
    return wide[..., 1 : 1 + shape[-1]]


@given(
    m=st.integers(1, 33),
    k=K_SIZES,
    n=st.integers(1, 40),
    lead=st.sampled_from([(), (2,)]),
    strided=st.booleans(),
    a_scale=st.sampled_from(["none", "tensor", "row"]),
    b_scale=st.sampled_from(["none", "tensor", "col"]),
    use_bias=st.booleans(),
    act=ACTS,
    out=OUTS,
    seed=st.integers(0, 2**16),
)
def test_int8_matmul_is_bit_identical(
    m, k, n, lead, strided, a_scale, b_scale, use_bias, act, out, seed
):
    gen = torch.Generator().manual_seed(seed)
    a = a_operand((*lead, m, k), torch.int8, gen, strided)
    b = k_major(rand((n, k), torch.int8, gen))
    rows = (*lead, m)
    sa = {"none": None, "tensor": torch.rand(()) + 0.1, "row": torch.rand(rows) + 0.1}[a_scale]
    sb = {"none": None, "tensor": torch.rand(1) + 0.1, "col": torch.rand(n) + 0.1}[b_scale]
    bias = torch.randn(n, generator=gen) if use_bias else None
    got, want = both(
        "matmul", a, b, a_scale=sa, b_scale=sb, bias=bias, activation=act, out_dtype=out
    )
    assert got.dtype == want.dtype and got.shape == want.shape
    assert torch.equal(got, want)


@given(m=st.integers(1, 17), k=K_SIZES, n=st.integers(1, 24), seed=st.integers(0, 2**16))
def test_int8_accumulator_is_exact_on_every_path(m, k, n, seed):
    gen = torch.Generator().manual_seed(seed)
    a = rand((m, k), torch.int8, gen)
    b = k_major(rand((n, k), torch.int8, gen))
    exact = (a.to(torch.int64) @ b.to(torch.int64)).to(torch.int32)
    # torch._int_mm, exact float32 K-chunks, float64 (reduced float32 precision set in torch)
    for int_mm_exact, ieee in ((True, True), (False, True), (False, False)):
        with (
            mock.patch.object(_cpu, "_int_mm_exact", lambda v=int_mm_exact: v),
            mock.patch.object(_cpu, "_ieee_float32", lambda v=ieee: v),
            K.use_backend("cpu"),
        ):
            assert torch.equal(K.matmul(a, b, out_dtype=torch.int32), exact)


def test_reduced_float32_precision_is_detected():
    assert _cpu._ieee_float32()
    previous = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium")
        assert not _cpu._ieee_float32()
    finally:
        torch.set_float32_matmul_precision(previous)


def test_int8_worst_case_codes_and_the_int32_bound_match_the_reference():
    # Every product -128 * -128 = 2**14. Up to K = 131071 the int32 accumulator is exact on both
    # backends; past it the dispatcher splits K (int64 partial sums), and the CPU op itself,
    # called directly, wraps like the reference's raw int32 accumulator.
    for k in (1024, 131071, 131073):
        a = torch.full((1, k), -128, dtype=torch.int8)
        b = k_major(torch.full((2, k), -128, dtype=torch.int8))
        exact = torch.tensor(float(k * 2**14), dtype=torch.float64).to(torch.float32)
        got, want = both("matmul", a, b, out_dtype=torch.float32)
        assert torch.equal(got, want) and torch.equal(got, exact.expand(1, 2))
        wrapped = (k * 2**14 + 2**31) % 2**32 - 2**31
        assert int(_cpu.int8_mm(a, b)[0, 0]) == wrapped
        assert torch.equal(_cpu.int8_mm(a, b), reference.matmul(a, b, out_dtype=torch.int32))


def test_int_mm_probe_holds_on_this_cpu():
    # The probe is what decides the path; it must be true where torch._int_mm is exact.
    a = torch.randint(-128, 128, (5, 300), dtype=torch.int8)
    b = torch.randint(-128, 128, (7, 300), dtype=torch.int8)
    exact = torch.equal(torch._int_mm(a, b.t()).long(), a.long() @ b.long().t())
    assert _cpu._int_mm_exact() or not exact


@given(
    m=st.integers(1, 20),
    k=K_SIZES,
    n=st.integers(1, 24),
    fa=st.sampled_from([torch.float8_e4m3fn, torch.float8_e5m2]),
    fb=st.sampled_from([torch.float8_e4m3fn, torch.float8_e5m2]),
    strided=st.booleans(),
    use_bias=st.booleans(),
    act=ACTS,
    out=OUTS,
    seed=st.integers(0, 2**16),
    chunk=st.sampled_from([None, 1, 50]),
)
def test_float8_matmul_matches_the_reference(
    m, k, n, fa, fb, strided, use_bias, act, out, seed, chunk
):
    gen = torch.Generator().manual_seed(seed)
    a = a_operand((m, k), fa, gen, strided)
    b = k_major(rand((n, k), fb, gen))
    bias = torch.randn(n, generator=gen) if use_bias else None
    sa, sb = torch.tensor(0.25), torch.rand(n) + 0.5
    # chunk: weight elements decoded at a time (1: one row of b.t() per GEMM; None: default)
    with mock.patch.object(_cpu, "_F8_CHUNK", chunk or _cpu._F8_CHUNK):
        got, want = both(
            "matmul", a, b, a_scale=sa, b_scale=sb, bias=bias, activation=act, out_dtype=out
        )
    assert_close(got, want, out, k * 16)  # data of magnitude ~4 (rand saturates fp8 at x4)


@given(
    m=st.integers(1, 20),
    k=K_SIZES,
    n=st.integers(1, 24),
    fa=st.sampled_from([torch.float8_e4m3fn, torch.float8_e5m2]),
    fb=st.sampled_from([torch.float8_e4m3fn, torch.float8_e5m2]),
    seed=st.integers(0, 2**16),
    nan=st.sampled_from([None, 0x7F, 0xFF]),
)
def test_float8_accumulator_is_the_float32_gemm_of_the_exact_values(m, k, n, fa, fb, seed, nan):
    # The decoded operands are the values times powers of two, rescaled after the GEMM: the
    # same op on the same layouts as the float32 GEMM of the exact values, so bit for bit.
    gen = torch.Generator().manual_seed(seed)
    a = rand((m, k), fa, gen)
    b_nk = rand((n, k), fb, gen)
    if nan is not None and fb == torch.float8_e4m3fn:
        b_nk.view(torch.uint8)[n // 2, k // 2] = nan
    want = torch.nn.functional.linear(a.to(torch.float32), b_nk.to(torch.float32))
    got = _cpu._float8_mm(a, b_nk.t())
    assert torch.equal(got.isnan(), want.isnan())
    assert torch.equal(got.nan_to_num(), want.nan_to_num())


def test_float8_upcast_is_exact_on_every_code():
    for dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
        codes = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(dtype)
        got = _cpu.upcast_float8(codes.reshape(16, 16))
        want = codes.to(torch.float32).reshape(16, 16)
        assert torch.equal(got.isnan(), want.isnan())
        assert torch.equal(got.nan_to_num(), want.nan_to_num())
        ok = ~want.isnan()  # bit for bit, so -0.0 stays -0.0
        assert torch.equal(got.view(torch.int32)[ok], want.view(torch.int32)[ok])


def _upcast_float8_oracle(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.float32)


@given(
    dtype=st.sampled_from(
        [torch.float8_e4m3fn, torch.float8_e5m2, torch.float8_e4m3fnuz, torch.float8_e5m2fnuz]
    ),
    shape=st.sampled_from([(0,), (1,), (3, 5), (7, 1, 33), (2, 300)]),
    seed=st.integers(0, 2**31 - 1),
    nan_codes=st.sampled_from([(), (0x7F,), (0xFF,), (0x7F, 0xFF)]),
)
def test_float8_upcast_is_bit_exact_on_random_codes(dtype, shape, seed, nan_codes):
    gen = torch.Generator().manual_seed(seed)
    raw = torch.randint(0, 256, shape, generator=gen, dtype=torch.int32).to(torch.uint8)
    if dtype == torch.float8_e4m3fn:  # the NaN scan: none, one sign, or both signs present
        raw[(raw & 0x7F) == 0x7F] = 0
        for i, code in enumerate(nan_codes):
            if raw.numel() > i:
                raw.view(-1)[i * raw.numel() // 2] = code
    t = raw.view(dtype)
    got = _cpu.upcast_float8(t)
    want = _upcast_float8_oracle(t)
    assert got.shape == t.shape and got.dtype == torch.float32
    assert torch.equal(got.isnan(), want.isnan())
    ok = ~want.isnan()
    assert torch.equal(got.view(torch.int32)[ok], want.view(torch.int32)[ok])


@given(
    m=st.integers(1, 20),
    k=K_SIZES,
    n=st.integers(1, 24),
    group=st.sampled_from([None, 2, 3, 32, 128]),
    zero=st.booleans(),
    dtype=st.sampled_from([torch.float32, torch.bfloat16]),
    strided=st.booleans(),
    use_bias=st.booleans(),
    act=ACTS,
    chunk=st.sampled_from([_cpu._INT4_CHUNK, 1, 64]),  # weight elements per N-chunk
    seed=st.integers(0, 2**16),
)
def test_int4_matmul_matches_the_reference(
    m, k, n, group, zero, dtype, strided, use_bias, act, chunk, seed
):
    gen = torch.Generator().manual_seed(seed)
    a = a_operand((m, k), dtype, gen, strided)
    q = torch.randint(-8, 8, (k, n), generator=gen)
    packed = k_major(pack_int4(q).t())  # K-major [ceil(K/2), N], as the layers store it
    groups = 1 if group is None else -(-k // group)
    scale = torch.rand(groups, n, generator=gen) * 0.2 + 0.01
    b_zero = torch.randint(-8, 8, (groups, n), generator=gen, dtype=torch.int8) if zero else None
    if group is None:
        scale = scale.reshape(n)
        b_zero = None if b_zero is None else b_zero.reshape(n)
    bias = torch.randn(n, generator=gen) if use_bias else None
    kwargs = dict(b_zero=b_zero, group_size=group, bias=bias, activation=act)
    with mock.patch.object(_cpu, "_INT4_CHUNK", chunk):
        got, want = both("matmul_int4", a, packed, scale, **kwargs)
    assert_close(got, want, dtype, k * 4)  # |w| up to ~3 (codes up to 15 times 0.21)


@given(
    batch=st.integers(1, 2),
    hw=st.tuples(st.integers(1, 9), st.integers(1, 9)),
    c_per_group=st.integers(1, 6),
    groups=st.sampled_from([1, 2]),
    oc_per_group=st.integers(1, 5),
    kernel=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    stride=st.integers(1, 2),
    dilation=st.integers(1, 2),
    padding=st.sampled_from([0, 1, ((0, 1), (2, 0))]),
    w_scale=st.booleans(),
    use_bias=st.booleans(),
    act=ACTS,
    seed=st.integers(0, 2**16),
)
def test_int8_conv2d_is_bit_identical(
    batch, hw, c_per_group, groups, oc_per_group, kernel, stride, dilation, padding, w_scale,
    use_bias, act, seed,
):  # fmt: skip
    gen = torch.Generator().manual_seed(seed)
    kh, kw = kernel
    h, w_ = hw[0] + dilation * (kh - 1), hw[1] + dilation * (kw - 1)
    c, oc = c_per_group * groups, oc_per_group * groups
    x = rand((batch, h, w_, c), torch.int8, gen)
    w = rand((oc, kh, kw, c_per_group), torch.int8, gen)
    ws = torch.rand(oc, generator=gen) + 0.1 if w_scale else None
    bias = torch.randn(oc, generator=gen) if use_bias else None
    kwargs = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    got, want = both("conv2d", x, w, x_scale=torch.tensor(0.5), w_scale=ws, bias=bias,
                     activation=act, out_dtype=torch.float32, **kwargs)  # fmt: skip
    assert torch.equal(got, want)
    got, want = both("conv2d", x, w, out_dtype=torch.int32, **kwargs)
    assert torch.equal(got, want)


@pytest.mark.parametrize("c", [113, 114, 120])  # 3*3*c around the float32-exact bound 1024
def test_int8_conv2d_long_reductions_stay_exact(c):
    gen = torch.Generator().manual_seed(c)
    x = torch.full((1, 4, 4, c), -128, dtype=torch.int8)
    x[0, 1:3] = rand((2, 4, c), torch.int8, gen)
    w = torch.full((3, 3, 3, c), -128, dtype=torch.int8)
    got, want = both("conv2d", x, w, padding=1, out_dtype=torch.int32)
    assert torch.equal(got, want)


def test_int8_conv2d_non_contiguous_input():
    gen = torch.Generator().manual_seed(0)
    x = rand((2, 6, 7, 10), torch.int8, gen)[..., 2:8]
    w = rand((4, 3, 3, 6), torch.int8, gen)
    got, want = both("conv2d", x, w, padding=1, out_dtype=torch.int32)
    assert torch.equal(got, want)


@given(
    fx=st.sampled_from([torch.float8_e4m3fn, torch.float8_e5m2]),
    hw=st.integers(3, 8),
    c=st.integers(1, 8),
    oc=st.integers(1, 6),
    seed=st.integers(0, 2**16),
)
def test_float8_conv2d_matches_the_reference(fx, hw, c, oc, seed):
    gen = torch.Generator().manual_seed(seed)
    x = rand((1, hw, hw, c), fx, gen)
    w = rand((oc, 3, 3, c), torch.float8_e4m3fn, gen)
    got, want = both("conv2d", x, w, padding=1, x_scale=torch.tensor(0.5), w_scale=torch.rand(oc),
                     out_dtype=torch.float32)  # fmt: skip
    assert_close(got, want, torch.float32, 9 * c * 16)


def test_float_ops_run_unchanged_on_the_cpu_backend():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 7, generator=gen), torch.randn(7, 3, generator=gen)
    got, want = both("matmul", a, b, activation="gelu")
    assert torch.equal(got, want)
    x, w = torch.randn(1, 5, 5, 3, generator=gen), torch.randn(4, 3, 3, 3, generator=gen)
    got, want = both("conv2d", x, w, padding=1)
    assert torch.equal(got, want)


@pytest.mark.parametrize(
    "k, group, planar",
    [
        (64, None, True),
        (64, 32, True),
        (256, 128, True),
        (63, None, False),
        (66, 4, False),
        (60, 3, False),
        (64, 48, False),
    ],
)
@pytest.mark.parametrize("chunk", [_cpu._INT4_CHUNK, 64, 1])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int4_planar_and_interleaved_paths_match_the_reference(k, group, planar, chunk, dtype):
    """Planes (K even, whole even groups) reorder the reduction: float32 tolerance; the
    interleaved path covers the rest."""
    gen = torch.Generator().manual_seed(k + (group or 0))
    m, n = 5, 7
    a = rand((m, k), dtype, gen)
    q = torch.randint(-8, 8, (k, n), generator=gen)
    packed = k_major(pack_int4(q).t())
    groups = 1 if group is None else -(-k // group)
    scale = torch.rand(groups, n, generator=gen) * 0.2 + 0.01
    zero = torch.randint(-8, 8, (groups, n), generator=gen, dtype=torch.int8)
    if group is None:
        scale, zero = scale.reshape(n), None
    spec = _checks.check_matmul_int4(a, packed, scale, zero, group, None, None, None)
    assert _cpu._planar_int4(spec) is planar
    with mock.patch.object(_cpu, "_INT4_CHUNK", chunk):
        got, want = both("matmul_int4", a, packed, scale, b_zero=zero, group_size=group)
    assert_close(got, want, dtype, k * 4)
