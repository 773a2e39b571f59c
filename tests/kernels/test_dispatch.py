"""Backend selection, argument errors, autograd and the lean import of mpq.kernels."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import mpq.kernels as K
from mpq.kernels import _dispatch, reference
from mpq.testing.device import requires_triton
from tests.kernels._helpers import k_major, pack_int4

pytestmark = pytest.mark.kernels

ROOT = Path(__file__).resolve().parents[2]
BACKENDS = ["reference", "cpu", pytest.param("triton", marks=requires_triton)]


# --- backend selection ---------------------------------------------------------------------


def test_cpu_tensors_default_to_the_cpu_fast_path(monkeypatch):
    monkeypatch.delenv("MPQ_KERNEL_BACKEND", raising=False)
    assert K.selected_backend("cpu") == "cpu"
    assert K.selected_backend(torch.device("cpu")) == "cpu"
    assert K.selected_backend("meta") == "reference"
    with K.use_backend("reference"):
        assert K.selected_backend("cpu") == "reference"


def test_forced_cpu_backend_refuses_other_devices():
    with (
        K.use_backend("cpu"),
        pytest.raises(RuntimeError, match=r"Expected CPU tensors.*Received: tensors on meta"),
    ):
        K.matmul(torch.ones(2, 2, device="meta"), torch.ones(2, 2, device="meta"))


@requires_triton
def test_cuda_tensors_default_to_triton(monkeypatch):
    monkeypatch.delenv("MPQ_KERNEL_BACKEND", raising=False)
    assert K.selected_backend("cuda") == "triton"  # a decision only: no device is touched


@requires_triton
def test_env_var_is_read_at_call_time(monkeypatch):
    monkeypatch.setenv("MPQ_KERNEL_BACKEND", "reference")
    assert K.selected_backend("cuda") == "reference"
    monkeypatch.setenv("MPQ_KERNEL_BACKEND", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert K.selected_backend("cpu") == "triton"
    monkeypatch.setenv("MPQ_KERNEL_BACKEND", "auto")
    assert K.selected_backend("cpu") == "cpu"


def test_env_var_is_validated(monkeypatch):
    monkeypatch.setenv("MPQ_KERNEL_BACKEND", "cublas")
    with pytest.raises(ValueError, match=r"MPQ_KERNEL_BACKEND.*Received: 'cublas'"):
        K.matmul(torch.ones(2, 2), torch.ones(2, 2))


@requires_triton
def test_use_backend_overrides_env_and_nests(monkeypatch):
    monkeypatch.setenv("MPQ_KERNEL_BACKEND", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with K.use_backend("reference"):
        assert K.selected_backend("cpu") == "reference"
        with K.use_backend("triton"):
            assert K.selected_backend("cpu") == "triton"
        with K.use_backend("auto"):
            assert K.selected_backend("cpu") == "cpu"
            assert K.selected_backend("cuda") == "triton"
        assert K.selected_backend("cpu") == "reference"
    assert K.selected_backend("cpu") == "triton"


def test_use_backend_rejects_unknown_names():
    with pytest.raises(
        ValueError, match=r"one of \('auto', 'triton', 'cpu', 'reference'\).*'cuda'"
    ):
        K.use_backend("cuda").__enter__()


@requires_triton
def test_forced_triton_on_cpu_without_interpreter_raises(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with K.use_backend("triton"), pytest.raises(RuntimeError, match=r"TRITON_INTERPRET=1.*cpu"):
        K.matmul(torch.ones(2, 2), torch.ones(2, 2))
    monkeypatch.setenv("MPQ_KERNEL_BACKEND", "triton")
    with pytest.raises(RuntimeError, match=r"MPQ_KERNEL_BACKEND=triton"):
        K.conv2d(torch.ones(1, 3, 3, 1), torch.ones(1, 1, 1, 1))


def test_forced_triton_without_triton_package_raises(monkeypatch):
    monkeypatch.setattr(_dispatch, "_TRITON_FOUND", False)
    with K.use_backend("triton"), pytest.raises(RuntimeError, match=r"`triton` package.*Received"):
        K.matmul(torch.ones(2, 2), torch.ones(2, 2))
    monkeypatch.delenv("MPQ_KERNEL_BACKEND", raising=False)
    with pytest.raises(RuntimeError, match=r"selected automatically for CUDA tensors"):
        K.selected_backend("cuda")


# --- argument errors ---------------------------------------------------------------------------

f32 = torch.ones(4, 8)
b32 = torch.ones(8, 3)
i8 = torch.ones(4, 8, dtype=torch.int8)
w8 = torch.ones(3, 8, dtype=torch.int8)

MATMUL_ERRORS = [
    (dict(a=[[1.0]], b=b32), TypeError, r"`a` to be a torch.Tensor.*Received: a=\[\[1.0\]\]"),
    (dict(a=f32, b="w"), TypeError, r"`b` to be a torch.Tensor.*Received: b='w'"),
    (dict(a=torch.ones(8), b=b32), ValueError, r"at least 2 dims.*shape \[8\]"),
    (dict(a=f32, b=torch.ones(1, 8, 3)), ValueError, r"`b` with 2 dims.*shape \[1, 8, 3\]"),
    (dict(a=f32, b=torch.ones(7, 3)), ValueError, r"a.shape\[-1\] == b.shape\[0\].*shape \[7, 3\]"),
    (
        dict(a=f32, b=b32.half()),
        TypeError,
        r"Received: a.dtype=torch.float32, b.dtype=torch.float16",
    ),
    (dict(a=f32.double(), b=b32.double()), TypeError, r"b.dtype=torch.float64"),
    (
        dict(a=i8, b=w8.t(), a_scale=torch.ones(4).double()),
        TypeError,
        r"float32.*a_scale=.*float64",
    ),
    (dict(a=i8, b=w8.t(), a_scale=torch.ones(3)), ValueError, r"per-row of a \(M=4\).*shape \[3\]"),
    (
        dict(a=i8, b=w8.t(), b_scale=torch.ones(3, 1)),
        ValueError,
        r"per-column of b.*shape \[3, 1\]",
    ),
    (dict(a=f32, b=b32, a_scale=torch.ones(())), ValueError, r"no `a_scale`/`b_scale` for float"),
    (dict(a=i8, b=w8.t().contiguous()), ValueError, r"K-major.*b = w.t\(\).*strides \(3, 1\)"),
    (
        dict(a=i8.t().contiguous().t(), b=w8.t()),
        ValueError,
        r"row-major 8-bit `a`.*strides \(1, 4\)",
    ),
    (dict(a=f32, b=b32, bias=torch.ones(4)), ValueError, r"`bias` of shape \[3\].*shape \[4\]"),
    (dict(a=f32, b=b32, bias=torch.ones(3, dtype=torch.int32)), TypeError, r"`bias`.*int32"),
    (dict(a=f32, b=b32, activation="tanh"), ValueError, r"activation=.tanh."),
    (dict(a=f32, b=b32, activation=1), ValueError, r"activation=1"),
    (dict(a=f32, b=b32, out_dtype=torch.int8), ValueError, r"out_dtype=torch.int8"),
    (dict(a=f32, b=b32, out_dtype="half_float"), ValueError, r"out_dtype='half_float'"),
    (dict(a=f32, b=b32, out_dtype=torch.int32), ValueError, r"out_dtype=torch.int32"),
    (
        dict(a=i8, b=w8.t(), a_scale=torch.ones(()), out_dtype=torch.int32),
        ValueError,
        r"out_dtype=int32 only for the raw int8 accumulator",
    ),
    (
        dict(a=torch.ones(4, 8, dtype=torch.float8_e4m3fn), b=w8.t()),
        TypeError,
        r"b.dtype=torch.int8",
    ),
    (dict(a=f32, b=b32.to("meta")), ValueError, r"same device.*b on meta"),
    (dict(a=f32, b=b32, bias=torch.ones(3, device="meta")), ValueError, r"`bias` on the.*meta"),
    (
        dict(a=i8, b=w8.t(), b_scale=torch.ones(3, device="meta")),
        ValueError,
        r"`b_scale` on the operands' device cpu.*meta",
    ),
]


def check_raises(op, positional, kwargs, exc, pattern, backend):
    """``op(*positional args, **rest)`` on ``backend`` raises ``exc`` matching ``pattern``."""
    kwargs = dict(kwargs)
    args = [kwargs.pop(name) for name in positional]
    with K.use_backend(backend), pytest.raises(exc, match=pattern):
        op(*args, **kwargs)


@pytest.mark.parametrize(("kwargs", "exc", "pattern"), MATMUL_ERRORS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_matmul_errors(kwargs, exc, pattern, backend, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    check_raises(K.matmul, ("a", "b"), kwargs, exc, pattern, backend)


def test_eight_bit_paths_are_forward_only():
    a = torch.ones(2, 4, dtype=torch.int8)
    scale = torch.ones(2, requires_grad=True)
    with pytest.raises(RuntimeError, match=r"forward-only.*a_scale=.*requires_grad=True"):
        K.matmul(a, k_major(torch.ones(3, 4, dtype=torch.int8)), a_scale=scale)
    with torch.no_grad():
        K.matmul(a, k_major(torch.ones(3, 4, dtype=torch.int8)), a_scale=scale)
    x = torch.ones(2, 4, requires_grad=True)
    with pytest.raises(RuntimeError, match=r"int4 matmul.*forward-only.*a=.*requires_grad=True"):
        K.matmul_int4(x, torch.zeros(2, 3, dtype=torch.int8), torch.ones(3))


q4 = torch.zeros(4, 3, dtype=torch.int8)  # K = 8, N = 3

INT4_ERRORS = [
    (
        dict(a=f32.to(torch.int8), b_packed=q4, b_scale=torch.ones(3)),
        TypeError,
        r"float.*`a`.*int8",
    ),
    (dict(a=f32, b_packed=q4.float(), b_scale=torch.ones(3)), TypeError, r"`b_packed`.*float32"),
    (
        dict(a=f32, b_packed=q4[:3], b_scale=torch.ones(3)),
        ValueError,
        r"\[4, N\] for K=8.*\[3, 3\]",
    ),
    (dict(a=f32, b_packed=q4, b_scale=torch.ones(3).half()), TypeError, r"`b_scale`.*float16"),
    (
        dict(a=f32, b_packed=q4, b_scale=torch.ones(2, 3)),
        ValueError,
        r"group_size required|per group",
    ),
    (
        dict(a=f32, b_packed=q4, b_scale=torch.ones(3, 3), group_size=4),
        ValueError,
        r"\[2, 3\] for K=8, group_size=4.*shape \[3, 3\]",
    ),
    (dict(a=f32, b_packed=q4, b_scale=torch.ones(3), group_size=0), ValueError, r"group_size=0"),
    (
        dict(a=f32, b_packed=q4, b_scale=torch.ones(3), b_zero=torch.ones(2)),
        ValueError,
        r"`b_zero` of the same shape.*shape \[2\]",
    ),
    (
        dict(a=f32, b_packed=q4, b_scale=torch.ones(3), b_zero=torch.ones(3).half()),
        TypeError,
        r"`b_zero`.*float16",
    ),
    (dict(a=f32, b_packed=q4, b_scale="s"), TypeError, r"`b_scale` to be a torch.Tensor.*'s'"),
    (dict(a=f32, b_packed=q4.to("meta"), b_scale=torch.ones(3)), ValueError, r"same device"),
    (
        dict(a=f32, b_packed=q4, b_scale=torch.ones(3, device="meta")),
        ValueError,
        r"`b_scale` on the operands' device cpu.*meta",
    ),
    (
        dict(a=f32, b_packed=q4, b_scale=torch.ones(3), b_zero=torch.ones(3, device="meta")),
        ValueError,
        r"`b_zero` on the operands' device cpu.*meta",
    ),
]


@pytest.mark.parametrize(("kwargs", "exc", "pattern"), INT4_ERRORS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_matmul_int4_errors(kwargs, exc, pattern, backend, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    check_raises(K.matmul_int4, ("a", "b_packed", "b_scale"), kwargs, exc, pattern, backend)


x4 = torch.ones(1, 5, 5, 4)
wc = torch.ones(6, 3, 3, 4)
CONV_ERRORS = [
    (dict(x=torch.ones(5, 5, 4), w=wc), ValueError, r"\[N, H, W, C\].*shape \[5, 5, 4\]"),
    (dict(x=x4, w=torch.ones(6, 3, 3)), ValueError, r"\[OC, KH, KW, C/groups\].*shape \[6, 3, 3\]"),
    (
        dict(x=x4, w=torch.ones(6, 3, 3, 3)),
        ValueError,
        r"divisible by groups=1.*shape \[6, 3, 3, 3\]",
    ),
    (dict(x=x4, w=wc, groups=4), ValueError, r"groups=4"),
    (dict(x=x4, w=wc, groups=0), ValueError, r"groups=0"),
    (dict(x=x4, w=wc, stride=0), ValueError, r"`stride` >= 1.*stride=0"),
    (dict(x=x4, w=wc, stride=(1, 2, 3)), ValueError, r"`stride`.*pair.*\(1, 2, 3\)"),
    (dict(x=x4, w=wc, padding=-1), ValueError, r"`padding`.*padding=-1"),
    (dict(x=x4, w=wc, dilation=3), ValueError, r"output size >= 1"),
    (dict(x=x4, w=wc.half()), TypeError, r"x.dtype=torch.float32, w.dtype=torch.float16"),
    (
        dict(
            x=x4.to(torch.int8),
            w=wc.to(torch.int8).permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1),
        ),
        ValueError,
        r"contiguous 8-bit `w`",
    ),
    (
        dict(x=x4.to(torch.int8), w=wc.to(torch.int8), x_scale=torch.ones(4)),
        ValueError,
        r"`x_scale` to be per-tensor.*shape \[4\]",
    ),
    (
        dict(x=x4.to(torch.int8), w=wc.to(torch.int8), w_scale=torch.ones(1, 6)),
        ValueError,
        r"per output channel \(OC=6\).*shape \[1, 6\]",
    ),
    (dict(x=x4, w=wc, w_scale=torch.ones(6)), ValueError, r"no `x_scale`/`w_scale` for float"),
    (dict(x=x4, w=wc, bias=torch.ones(5)), ValueError, r"`bias` of shape \[6\]"),
    (dict(x=x4, w=wc.to("meta")), ValueError, r"same device.*w on meta"),
    (
        dict(x=x4, w=wc, padding=((1,), (1, 1))),
        ValueError,
        r"`padding` to be an int or a pair of ints",
    ),
    (
        dict(x=x4, w=wc, x_scale=torch.ones(())),
        ValueError,
        r"no `x_scale`/`w_scale` for float.*Received: x.dtype=torch.float32 with x_scale=tensor",
    ),
    (
        dict(x=x4.to(torch.int8), w=wc.to(torch.int8), w_scale=torch.ones(6), out_dtype="int32"),
        ValueError,
        r"out_dtype=int32 only for the raw int8 accumulator.*w_scale=tensor of shape \[6\]",
    ),
    (
        dict(x=x4.to(torch.int8), w=wc.to(torch.int8), x_scale=torch.ones((), device="meta")),
        ValueError,
        r"`x_scale` on the operands' device cpu.*meta",
    ),
    (
        dict(x=x4.to(torch.int8), w=wc.to(torch.int8), w_scale=torch.ones(6, dtype=torch.int32)),
        TypeError,
        r"`w_scale` to be a float32 tensor.*int32",
    ),
    (dict(x=x4, w=wc, bias=torch.ones(6, device="meta")), ValueError, r"`bias` on the.*meta"),
]


@pytest.mark.parametrize(("kwargs", "exc", "pattern"), CONV_ERRORS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_conv2d_errors(kwargs, exc, pattern, backend, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    check_raises(K.conv2d, ("x", "w"), kwargs, exc, pattern, backend)


# --- autograd on the reference path (the Triton path is tested in test_triton_*) -------------


@pytest.mark.parametrize("activation", [None, "relu", "gelu", "silu"])
def test_reference_float_matmul_is_differentiable(activation):
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(3, 2, 5, generator=gen, dtype=torch.float64)
    b = torch.randn(5, 4, generator=gen, dtype=torch.float64)
    bias = torch.randn(4, generator=gen, dtype=torch.float64)
    a32, b32_, bias32 = (t.float().requires_grad_() for t in (a, b, bias))
    out = K.matmul(a32, b32_, bias=bias32, activation=activation)
    g = torch.randn(out.shape, generator=gen)
    out.backward(g)
    a64, b64, bias64 = (t.clone().requires_grad_() for t in (a, b, bias))
    fn = reference.activation_fn(activation) or (lambda z: z)
    fn(a64 @ b64 + bias64).backward(g.double())
    for got, want in ((a32, a64), (b32_, b64), (bias32, bias64)):
        torch.testing.assert_close(got.grad.double(), want.grad, rtol=1e-5, atol=1e-5)


def test_int4_packing_helper_layout():
    # The test-side packer puts element 2i in the low nibble: [1, -1] -> 0xF1.
    assert pack_int4(torch.tensor([[1], [-1]])).view(torch.uint8).item() == 0xF1


# --- int8 reductions longer than int32 holds (issue #12) ------------------------------------

BOUND = 131071  # 127 * 127 * K and 128 * 128 * K fit in int32 for every K <= BOUND


def test_int8_exact_k_bound_is_the_int32_limit():
    from mpq.kernels import _checks

    assert _checks.INT8_EXACT_K == BOUND
    assert 128 * 128 * BOUND <= 2**31 - 1 < 128 * 128 * (BOUND + 1)
    assert _checks.split_k_for_int32(2 * BOUND + 5) == [
        (0, BOUND),
        (BOUND, 2 * BOUND),
        (2 * BOUND, 2 * BOUND + 5),
    ]
    assert _checks.split_k_for_int32(BOUND) == [(0, BOUND)]


def test_int8_matmul_past_the_int32_bound_is_exact():
    """All-127 codes with K = 140000: the exact sum 127*127*K exceeds 2**31 (a wrapped int32
    accumulator gives a negative number); the result is the fp32 epilogue of the exact sum."""
    k = 140_000
    a = torch.full((2, k), 127, dtype=torch.int8)
    w = torch.full((3, k), 127, dtype=torch.int8)
    exact = 127 * 127 * k
    assert exact > 2**31 - 1
    a_scale, b_scale = torch.tensor(0.25), torch.tensor([1.0, 0.5, 2.0])
    y = K.matmul(a, w.t(), a_scale=a_scale, b_scale=b_scale, out_dtype=torch.float32)
    expected = (
        torch.tensor(float(exact), dtype=torch.float64).to(torch.float32) * a_scale
    ) * b_scale
    assert torch.equal(y, expected.expand(2, 3))
    # -128 x -128 at K = BOUND + 1: exactly 2**31, one past int32.
    a = torch.full((1, BOUND + 1), -128, dtype=torch.int8)
    w = torch.full((2, BOUND + 1), -128, dtype=torch.int8)
    y = K.matmul(a, w.t(), out_dtype=torch.float32)
    assert torch.equal(y, torch.full((1, 2), 2.0**31))


def test_int8_matmul_int32_output_past_the_bound_is_exact_or_refused():
    k = 140_000
    a = torch.full((1, k), 127, dtype=torch.int8)
    w = torch.stack(
        [torch.full((k,), 127, dtype=torch.int8), torch.full((k,), -1, dtype=torch.int8)]
    )
    with pytest.raises(
        OverflowError,
        match=r"Expected the exact int8 accumulator of the matmul to fit in int32.*Received: values in \[-\d+, 2\d+\]",
    ):
        K.matmul(a, w.t(), out_dtype=torch.int32)
    # Alternating signs: the exact sum fits in int32 and comes back exactly.
    w = torch.ones(2, k, dtype=torch.int8)
    w[:, 1::2] = -1
    y = K.matmul(a, w.t(), out_dtype=torch.int32)
    assert y.dtype == torch.int32 and torch.equal(y, torch.zeros(1, 2, dtype=torch.int32))


@pytest.mark.parametrize("backend", BACKENDS)
def test_int8_split_matmul_matches_the_unsplit_kernel(backend, monkeypatch):
    """The split itself (chunk layout, int64 sum, epilogue) on both backends, with the bound
    lowered to 7 so that K = 20 runs as chunks 7 + 7 + 6: bit-equal to the unsplit int32 kernel
    (exact sums, the same fp32 epilogue)."""
    from mpq.kernels import _checks

    gen = torch.Generator().manual_seed(12)
    a = torch.randint(-128, 128, (2, 3, 20), generator=gen, dtype=torch.int8)
    w = torch.randint(-128, 128, (5, 20), generator=gen, dtype=torch.int8)
    a_scale, b_scale = torch.rand(2, 3, generator=gen), torch.rand(5, generator=gen)
    bias = torch.randn(5, generator=gen)
    kwargs = dict(a_scale=a_scale, b_scale=b_scale, bias=bias, activation="relu")
    with K.use_backend("reference"):
        raw = K.matmul(a, w.t(), out_dtype=torch.int32)
        want = K.matmul(a, w.t(), out_dtype=torch.float32, **kwargs)
    monkeypatch.setattr(_checks, "INT8_EXACT_K", 7)
    with K.use_backend(backend):
        assert torch.equal(K.matmul(a, w.t(), out_dtype=torch.int32), raw)
        assert torch.equal(K.matmul(a, w.t(), out_dtype=torch.float32, **kwargs), want)


def test_int8_conv2d_past_the_int32_bound_is_exact():
    """groups=2, 2x2 taps, C/groups = 34000: reduction length 136000 > BOUND."""
    cg = 34_000
    x = torch.full((1, 2, 2, 2 * cg), 127, dtype=torch.int8)
    w = torch.full((4, 2, 2, cg), -128, dtype=torch.int8)
    w[2:] = 127
    exact = torch.tensor([-127 * 128 * 4 * cg] * 2 + [127 * 127 * 4 * cg] * 2, dtype=torch.float64)
    assert exact.abs().max() > 2**31 - 1
    y = K.conv2d(x, w, groups=2, w_scale=torch.full((4,), 0.5), out_dtype=torch.float32)
    assert torch.equal(y.reshape(4), exact.to(torch.float32) * 0.5)
    with pytest.raises(OverflowError, match=r"accumulator of the conv2d to fit in int32"):
        K.conv2d(x, w, groups=2, out_dtype=torch.int32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_int8_split_conv2d_matches_the_unsplit_kernel(backend, monkeypatch):
    """Channel chunks of every group (bound lowered to 13: 3x3 taps -> one channel per chunk
    of the 5 per group), with stride, asymmetric padding and dilation: bit-equal to unsplit."""
    from mpq.kernels import _checks

    gen = torch.Generator().manual_seed(13)
    x = torch.randint(-128, 128, (2, 6, 7, 10), generator=gen, dtype=torch.int8)
    w = torch.randint(-128, 128, (4, 3, 3, 5), generator=gen, dtype=torch.int8)
    conv = dict(stride=(1, 2), padding=((1, 0), (2, 1)), dilation=(2, 1), groups=2)
    kwargs = dict(
        x_scale=torch.tensor(0.5),
        w_scale=torch.rand(4, generator=gen),
        bias=torch.randn(4, generator=gen),
    )
    with K.use_backend("reference"):
        raw = K.conv2d(x, w, out_dtype=torch.int32, **conv)
        want = K.conv2d(x, w, out_dtype=torch.float32, **conv, **kwargs)
    monkeypatch.setattr(_checks, "INT8_EXACT_K", 13)
    with K.use_backend(backend):
        assert torch.equal(K.conv2d(x, w, out_dtype=torch.int32, **conv), raw)
        assert torch.equal(K.conv2d(x, w, out_dtype=torch.float32, **conv, **kwargs), want)


def test_int8_conv2d_with_more_taps_than_the_bound_raises(monkeypatch):
    from mpq.kernels import _checks

    monkeypatch.setattr(_checks, "INT8_EXACT_K", 3)
    x = torch.zeros(1, 3, 3, 1, dtype=torch.int8)
    w = torch.zeros(1, 2, 2, 1, dtype=torch.int8)
    with pytest.raises(
        ValueError,
        match=r"Expected an int8 conv2d kernel of at most 3 taps.*Received: w=.*KH\*KW=4",
    ):
        K.conv2d(x, w)


@settings(deadline=None, max_examples=40)
@given(
    m=st.integers(1, 3),
    n=st.integers(1, 4),
    k=st.integers(1, 40),
    bound=st.integers(1, 40),
    seed=st.integers(0, 2**31 - 1),
)
def test_int8_split_matmul_property(m, n, k, bound, seed):
    """For any bound (chunk length), the split matmul equals the unsplit exact int32 sum and its
    fp32 epilogue, bit for bit (reference backend)."""
    from unittest import mock

    from mpq.kernels import _checks

    gen = torch.Generator().manual_seed(seed)
    a = torch.randint(-128, 128, (m, k), generator=gen, dtype=torch.int8)
    w = torch.randint(-128, 128, (n, k), generator=gen, dtype=torch.int8)
    scales = dict(a_scale=torch.rand(m, generator=gen), b_scale=torch.rand(n, generator=gen))
    with K.use_backend("reference"):
        raw = K.matmul(a, w.t(), out_dtype=torch.int32)
        want = K.matmul(a, w.t(), out_dtype=torch.float32, **scales)
        with mock.patch.object(_checks, "INT8_EXACT_K", bound):
            assert torch.equal(K.matmul(a, w.t(), out_dtype=torch.int32), raw)
            assert torch.equal(K.matmul(a, w.t(), out_dtype=torch.float32, **scales), want)
    exact = a.to(torch.int64) @ w.t().to(torch.int64)
    assert torch.equal(raw.to(torch.int64), exact)
