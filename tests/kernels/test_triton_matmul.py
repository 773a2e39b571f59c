"""Triton matmul kernels (interpreter on CPU, or a GPU) against the reference."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import mpq.kernels as K
from mpq.kernels import reference
from tests.kernels._helpers import (
    DEVICE,
    assert_close,
    k_major,
    pack_int4,
    rand,
    requires_triton_device,
)

pytestmark = [pytest.mark.kernels, requires_triton_device]

FLOAT_DTYPES = [torch.float32, torch.float16, torch.bfloat16]
FP8_PAIRS = [
    (torch.float8_e4m3fn, torch.float8_e4m3fn),
    (torch.float8_e4m3fn, torch.float8_e5m2),
    (torch.float8_e5m2, torch.float8_e4m3fn),
    (torch.float8_e5m2, torch.float8_e5m2),
]
# (M, N, K): not multiples of the blocks, M = 1, N = 1, K = 1, empty M, exact blocks, many tiles
SHAPES = [
    (37, 29, 45),
    (1, 33, 70),
    (5, 1, 40),
    (9, 17, 1),
    (0, 8, 16),
    (64, 32, 64),
    (70, 40, 100),
]
EPILOGUES = [(act, bias) for act in (None, "relu", "gelu", "silu") for bias in (False, True)]


def triton_matmul(*args, split_k=None, **kwargs):
    if split_k is None:
        with K.use_backend("triton"):
            return K.matmul(*args, **kwargs)
    from mpq.kernels import _triton_matmul

    return _triton_matmul.matmul(*args, split_k=split_k, **kwargs)


def check_float(a, b, **kwargs):
    out = triton_matmul(a, b, **kwargs)
    ref = reference.matmul(a.cpu(), b.cpu(), **{k: _cpu(v) for k, v in kwargs.items()})
    assert out.device.type == DEVICE
    assert_close(out, ref, ref.dtype, k=b.shape[0])
    return out


def _cpu(v):
    return v.cpu() if isinstance(v, torch.Tensor) else v


@pytest.mark.parametrize(("activation", "with_bias"), EPILOGUES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_float_matmul_grid(dtype, shape, activation, with_bias):
    M, N, Kd = shape
    gen = torch.Generator().manual_seed(M * 1000 + N * 10 + Kd)
    a, b = rand((M, Kd), dtype, gen, DEVICE), rand((Kd, N), dtype, gen, DEVICE)
    bias = rand((N,), dtype, gen, DEVICE) if with_bias else None
    out = check_float(a, b, bias=bias, activation=activation)
    assert out.dtype == dtype and out.shape == (M, N)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize(
    "layout", ["row_major_b", "k_major_b", "col_major_a", "batched_a", "sliced"]
)
def test_float_matmul_layouts(dtype, layout):
    gen = torch.Generator().manual_seed(7)
    M, N, Kd = 19, 21, 50
    a, b = rand((M, Kd), dtype, gen, DEVICE), rand((Kd, N), dtype, gen, DEVICE)
    if layout == "k_major_b":
        b = b.t().contiguous().t()
    elif layout == "col_major_a":
        a = a.t().contiguous().t()
    elif layout == "batched_a":
        a = rand((3, 2, M, Kd), dtype, gen, DEVICE)
    elif layout == "sliced":
        a = rand((M, 2 * Kd), dtype, gen, DEVICE)[:, ::2]
        b = rand((Kd, 3 * N), dtype, gen, DEVICE)[:, 1::3]
    out = check_float(a, b, activation="relu")
    assert out.shape == (*a.shape[:-1], N)


@pytest.mark.parametrize("out_dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_float_matmul_out_dtype(out_dtype):
    gen = torch.Generator().manual_seed(8)
    a, b = rand((13, 40), torch.bfloat16, gen, DEVICE), rand((40, 11), torch.bfloat16, gen, DEVICE)
    out = check_float(a, b, bias=rand((11,), torch.float32, gen, DEVICE), out_dtype=out_dtype)
    assert out.dtype == out_dtype


SCALES = ["none", "tensor", "row_col", "row_col_2d"]


def make_scales(kind, M, N, gen):
    if kind == "none":
        return None, None
    if kind == "tensor":
        return torch.tensor(0.75, device=DEVICE), torch.tensor([1.5], device=DEVICE)
    a_scale, b_scale = torch.rand(M, generator=gen) + 0.5, torch.rand(N, generator=gen) + 0.5
    if kind == "row_col_2d":
        a_scale, b_scale = a_scale[:, None], b_scale[None, :]
    return a_scale.to(DEVICE), b_scale.to(DEVICE)


@pytest.mark.parametrize(
    ("activation", "with_bias"), [(None, False), ("gelu", True), ("silu", False)]
)
@pytest.mark.parametrize("scales", SCALES)
@pytest.mark.parametrize(
    "shape", [(37, 29, 45), (1, 33, 70), (5, 1, 40), (9, 17, 1), (0, 8, 16)], ids=str
)
@pytest.mark.parametrize(("a_dtype", "b_dtype"), FP8_PAIRS, ids=str)
def test_float8_matmul_grid(a_dtype, b_dtype, shape, scales, activation, with_bias):
    M, N, Kd = shape
    gen = torch.Generator().manual_seed(M + N + Kd)
    a = rand((M, Kd), a_dtype, gen, DEVICE)
    b = k_major(rand((N, Kd), b_dtype, gen, DEVICE))
    a_scale, b_scale = make_scales(scales, M, N, gen)
    bias = rand((N,), torch.bfloat16, gen, DEVICE) if with_bias else None
    out = check_float(a, b, a_scale=a_scale, b_scale=b_scale, bias=bias, activation=activation)
    assert out.dtype == torch.bfloat16


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_int8_matmul_raw_accumulator_is_exact(shape):
    M, N, Kd = shape
    gen = torch.Generator().manual_seed(M + 3 * N + Kd)
    a, w = rand((M, Kd), torch.int8, gen, DEVICE), rand((N, Kd), torch.int8, gen, DEVICE)
    out = triton_matmul(a, k_major(w), out_dtype=torch.int32)
    assert out.dtype == torch.int32
    assert torch.equal(out.cpu(), reference.matmul(a.cpu(), k_major(w.cpu()), out_dtype="int32"))


@pytest.mark.parametrize(
    ("activation", "with_bias"), [(None, True), ("relu", True), ("relu", False)]
)
@pytest.mark.parametrize("scales", SCALES[1:])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_int8_matmul_epilogue_is_exact(shape, scales, activation, with_bias):
    # Exact int32 accumulator + identical fp32 epilogue ops in the same order: bit-equal.
    M, N, Kd = shape
    gen = torch.Generator().manual_seed(M + 5 * N + Kd)
    a, w = rand((M, Kd), torch.int8, gen, DEVICE), rand((N, Kd), torch.int8, gen, DEVICE)
    a_scale, b_scale = make_scales(scales, M, N, gen)
    bias = rand((N,), torch.float32, gen, DEVICE) if with_bias else None
    kwargs = dict(a_scale=a_scale, b_scale=b_scale, bias=bias, activation=activation)
    for out_dtype in (torch.float32, None):
        out = triton_matmul(a, k_major(w), out_dtype=out_dtype, **kwargs)
        ref = reference.matmul(
            a.cpu(),
            k_major(w.cpu()),
            out_dtype=out_dtype,
            **{k: _cpu(v) for k, v in kwargs.items()},
        )
        assert out.dtype == ref.dtype == (out_dtype or torch.bfloat16)
        assert torch.equal(out.cpu(), ref)


@pytest.mark.parametrize("activation", ["gelu", "silu"])
def test_int8_matmul_smooth_activations(activation):
    gen = torch.Generator().manual_seed(11)
    a, w = rand((21, 64), torch.int8, gen, DEVICE), rand((18, 64), torch.int8, gen, DEVICE)
    a_scale, b_scale = make_scales("row_col", 21, 18, gen)
    check_float(a, k_major(w), a_scale=a_scale / 500, b_scale=b_scale / 50, activation=activation)


@pytest.mark.parametrize("split_k", [2, 3])
@pytest.mark.parametrize(
    ("a_dtype", "b_dtype"),
    [(torch.float16, torch.float16), (torch.bfloat16, torch.bfloat16), (torch.float32, torch.float32),
     (torch.float8_e4m3fn, torch.float8_e5m2), (torch.int8, torch.int8)],
    ids=str,
)  # fmt: skip
@pytest.mark.parametrize("shape", [(1, 33, 130), (37, 29, 100), (3, 5, 7)], ids=str)
def test_split_k_path(shape, a_dtype, b_dtype, split_k):
    M, N, Kd = shape
    gen = torch.Generator().manual_seed(M + N + Kd + split_k)
    a = rand((M, Kd), a_dtype, gen, DEVICE)
    b = k_major(rand((N, Kd), b_dtype, gen, DEVICE))
    bias = rand((N,), torch.float32, gen, DEVICE)
    if a_dtype == torch.int8:
        raw = triton_matmul(a, b, out_dtype=torch.int32, split_k=split_k)
        assert torch.equal(raw.cpu(), reference.matmul(a.cpu(), b.cpu(), out_dtype=torch.int32))
    scales = {}
    if a_dtype in (torch.int8, torch.float8_e4m3fn):
        scales = dict(a_scale=torch.rand(M, generator=gen).to(DEVICE), b_scale=torch.tensor(0.5))
        scales["b_scale"] = scales["b_scale"].to(DEVICE)
    out = triton_matmul(a, b, bias=bias, activation="relu", split_k=split_k, **scales)
    ref = reference.matmul(
        a.cpu(),
        b.cpu(),
        bias=bias.cpu(),
        activation="relu",
        **{k: v.cpu() for k, v in scales.items()},
    )
    if a_dtype == torch.int8:
        # Exact int32 partial sums, a fixed-order exact reduction, the reference's epilogue.
        assert torch.equal(out.cpu(), ref)
    else:
        assert_close(out, ref, ref.dtype, k=Kd)


def test_per_row_scale_of_batched_a():
    gen = torch.Generator().manual_seed(12)
    a = rand((2, 3, 16), torch.int8, gen, DEVICE)
    w = rand((5, 16), torch.int8, gen, DEVICE)
    a_scale = (torch.rand(2, 3, 1, generator=gen) + 0.5).to(DEVICE)
    out = triton_matmul(a, k_major(w), a_scale=a_scale, out_dtype=torch.float32)
    ref = reference.matmul(a.cpu(), k_major(w.cpu()), a_scale=a_scale.cpu(), out_dtype="float32")
    assert out.shape == (2, 3, 5)
    assert torch.equal(out.cpu(), ref)


# --- int4 weight-only ------------------------------------------------------------------------

INT4_CASES = [
    # (M, N, K, group_size, with_zero)
    (37, 29, 45, None, False),
    (1, 33, 64, 32, True),
    (5, 1, 40, 16, False),
    (9, 17, 1, None, True),
    (0, 8, 16, None, False),
    (70, 40, 100, 32, True),  # last group partial
    (6, 10, 31, 7, True),  # odd K, group not dividing the block
]


@pytest.mark.parametrize(("activation", "with_bias"), [(None, False), ("silu", True)])
@pytest.mark.parametrize("case", INT4_CASES, ids=str)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_int4_matmul_grid(dtype, case, activation, with_bias):
    M, N, Kd, group_size, with_zero = case
    gen = torch.Generator().manual_seed(M + N + Kd)
    a = rand((M, Kd), dtype, gen, DEVICE)
    q = torch.randint(-8, 8, (Kd, N), generator=gen)
    groups = 1 if group_size is None else -(-Kd // group_size)
    scale = torch.rand((groups, N) if group_size else (N,), generator=gen) / 4
    zero = torch.randint(-8, 8, scale.shape, generator=gen, dtype=torch.int8) if with_zero else None
    bias = rand((N,), dtype, gen) if with_bias else None
    packed = pack_int4(q)
    kwargs = dict(b_zero=zero, group_size=group_size, bias=bias, activation=activation)
    ref = reference.matmul_int4(a.cpu(), packed, scale, **kwargs)
    dev = {k: v.to(DEVICE) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    for b_packed in (packed, packed.t().contiguous().t()):  # row-major and K-major storage
        with K.use_backend("triton"):
            out = K.matmul_int4(a, b_packed.to(DEVICE), scale.to(DEVICE), **dev)
        assert out.dtype == dtype
        assert_close(out, ref, dtype, k=Kd)


def test_int4_uint8_container_and_float_zero():
    gen = torch.Generator().manual_seed(13)
    a = rand((7, 24), torch.float16, gen, DEVICE)
    q = torch.randint(-8, 8, (24, 9), generator=gen)
    scale = torch.rand(3, 9, generator=gen)
    zero = torch.rand(3, 9, generator=gen) * 4 - 2
    packed = pack_int4(q).view(torch.uint8)
    with K.use_backend("triton"):
        out = K.matmul_int4(
            a, packed.to(DEVICE), scale.to(DEVICE), b_zero=zero.to(DEVICE), group_size=8
        )
    ref = reference.matmul_int4(a.cpu(), packed, scale, b_zero=zero, group_size=8)
    assert_close(out, ref, torch.float16, k=24)


# --- properties, autograd, set-up ------------------------------------------------------------


@settings(max_examples=12, deadline=None, derandomize=True)
@given(
    M=st.integers(0, 70),
    N=st.integers(1, 70),
    Kd=st.integers(1, 90),
    kind=st.sampled_from(["float16", "bfloat16", "float32", "e4m3xe5m2", "int8"]),
    activation=st.sampled_from([None, "relu", "gelu", "silu"]),
    with_bias=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_matmul_hypothesis_shapes(M, N, Kd, kind, activation, with_bias, seed):
    gen = torch.Generator().manual_seed(seed)
    if kind in ("float16", "bfloat16", "float32"):
        dtype = getattr(torch, kind)
        a, b = rand((M, Kd), dtype, gen, DEVICE), rand((Kd, N), dtype, gen, DEVICE)
        scales = {}
    else:
        a_dtype, b_dtype = (
            (torch.int8, torch.int8) if kind == "int8" else (torch.float8_e4m3fn, torch.float8_e5m2)
        )
        a, b = rand((M, Kd), a_dtype, gen, DEVICE), k_major(rand((N, Kd), b_dtype, gen, DEVICE))
        a_scale, b_scale = make_scales("row_col", M, N, gen)
        scales = dict(a_scale=a_scale / 100, b_scale=b_scale / 100)
    bias = rand((N,), torch.float32, gen, DEVICE) if with_bias else None
    check_float(a, b, bias=bias, activation=activation, **scales)


@pytest.mark.parametrize("activation", [None, "gelu", "silu"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_triton_float_matmul_gradients_match_reference(dtype, activation):
    gen = torch.Generator().manual_seed(14)
    a0, b0 = rand((2, 9, 20), dtype, gen, DEVICE), rand((20, 11), dtype, gen, DEVICE)
    bias0 = rand((11,), dtype, gen, DEVICE)
    g = rand((2, 9, 11), dtype, gen, DEVICE)
    grads = {}
    for backend in ("triton", "reference"):
        a, b, bias = (t.detach().cpu().clone().requires_grad_() for t in (a0, b0, bias0))
        if backend == "triton":
            a, b, bias = (t.detach().to(DEVICE).requires_grad_() for t in (a, b, bias))
        with K.use_backend(backend):
            out = K.matmul(a, b, bias=bias, activation=activation)
            out.backward(g.to(out.device))
        grads[backend] = (a.grad, b.grad, bias.grad)
    for got, want in zip(grads["triton"], grads["reference"], strict=True):
        assert got.dtype == want.dtype
        assert_close(got.cpu(), want.cpu(), dtype, k=20)


def test_kernels_imported_without_interpreter_refuse_cpu_tensors():
    root = Path(__file__).resolve().parents[2]
    code = textwrap.dedent(
        """
        import os, torch
        os.environ.pop("TRITON_INTERPRET", None)
        from mpq.kernels import _triton_matmul
        os.environ["TRITON_INTERPRET"] = "1"
        try:
            _triton_matmul.matmul(torch.ones(2, 2), torch.ones(2, 2))
        except RuntimeError as e:
            print("RAISED", e)
        """
    )
    env = {k: v for k, v in __import__("os").environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run(
        [sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, check=True
    )
    assert res.stdout.startswith("RAISED Expected mpq's Triton kernels to be imported with "
                                 "TRITON_INTERPRET=1"), res.stdout + res.stderr  # fmt: skip


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_int4_layout_is_the_one_of_mpq_quantizers_pack_int4(backend):
    # A [N, K] weight packed along K by the quantizers, transposed (no copy) to [ceil(K/2), N].
    from mpq.quantizers import pack_int4 as quantizers_pack_int4

    gen = torch.Generator().manual_seed(15)
    N, Kd = 6, 11
    q_nk = torch.randint(-8, 8, (N, Kd), generator=gen, dtype=torch.int8)
    a = rand((3, Kd), torch.float32, gen)
    scale = torch.rand(N, generator=gen)
    b_packed = quantizers_pack_int4(q_nk, axis=-1).t()
    device = DEVICE if backend == "triton" else "cpu"
    with K.use_backend(backend):
        out = K.matmul_int4(a.to(device), b_packed.to(device), scale.to(device))
    want = a.double() @ (q_nk.double() * scale.double()[:, None]).t()
    assert_close(out, want.float(), torch.float32, k=Kd)


def test_launcher_rejects_bad_split_k_and_foreign_devices():
    from mpq.kernels import _triton_matmul

    a = torch.ones(2, 3, device=DEVICE)
    with pytest.raises(ValueError, match=r"`split_k` to be a positive int.*split_k=0"):
        _triton_matmul.matmul(a, torch.ones(3, 2, device=DEVICE), split_k=0)
    meta = torch.ones(2, 3, device="meta")
    with pytest.raises(RuntimeError, match=r"Expected CUDA tensors.*Received: tensors on meta"):
        _triton_matmul.matmul(meta, torch.ones(3, 2, device="meta"))
