"""Persistent TMA matmul (forced in the interpreter, or on a GPU) against the reference."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import mpq.kernels as K
from mpq.kernels import _triton_options, reference
from tests.kernels._helpers import DEVICE, assert_close, k_major, rand, requires_triton_device

pytestmark = [pytest.mark.kernels, requires_triton_device]

# (M, N, K): odd M, N and K not multiples of the 16x32x32 interpreter tile, several tiles per
# program (3 programs in the interpreter), M = 1, a single partial tile.
SHAPES = [(37, 40, 48), (1, 24, 64), (70, 72, 96), (5, 8, 16)]


def persistent(*args, **kwargs):
    with K.use_backend("triton"), _triton_options.triton_options(kernel="persistent"):
        return K.matmul(*args, **kwargs)


def _cpu(kwargs):
    return {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}


@pytest.mark.parametrize("b_layout", ["row_major", "k_major"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_float_persistent_matches_reference(dtype, shape, b_layout):
    M, N, Kd = shape
    gen = torch.Generator().manual_seed(M + N + Kd)
    a = rand((M, Kd), dtype, gen, DEVICE)
    b = rand((Kd, N), dtype, gen, DEVICE)
    if b_layout == "k_major":
        b = k_major(b.t())
    kwargs = dict(bias=rand((N,), dtype, gen, DEVICE), activation="gelu")
    out = persistent(a, b, **kwargs)
    ref = reference.matmul(a.cpu(), b.cpu(), **_cpu(kwargs))
    assert_close(out, ref, dtype, k=Kd)


@pytest.mark.parametrize("dtype", [torch.float16, torch.int8], ids=str)
def test_tma_bounds_mask_partial_k_and_unaligned_output(dtype):
    # float16: K = 45 inside rows of 48 (aligned stride): TMA's bounds, not the stride, end
    # each row (8-bit weights must be contiguous, so int8 takes K = 48). N = 29 gives an output
    # whose row stride is not 16-byte aligned: masked pointer stores instead of TMA stores.
    gen = torch.Generator().manual_seed(45)
    M, N, Kd = 37, 29, 45 if dtype == torch.float16 else 48
    a = rand((M, 48), dtype, gen, DEVICE)[:, :Kd]
    w = rand((N, 48), dtype, gen, DEVICE)[:, :Kd]
    if dtype == torch.int8:
        out = persistent(a, w.t(), out_dtype=torch.int32)
        assert torch.equal(out.cpu(), reference.matmul(a.cpu(), w.t().cpu(), out_dtype="int32"))
    else:
        out = persistent(a, w.t(), activation="relu")
        assert_close(out, reference.matmul(a.cpu(), w.t().cpu(), activation="relu"), dtype, k=Kd)


@pytest.mark.parametrize("scales", ["tensor", "row_col"])
@pytest.mark.parametrize("shape", SHAPES[:3], ids=str)
def test_int8_persistent_is_exact(shape, scales):
    M, N, Kd = shape
    gen = torch.Generator().manual_seed(M * N + Kd)
    a, w = rand((M, Kd), torch.int8, gen, DEVICE), rand((N, Kd), torch.int8, gen, DEVICE)
    raw = persistent(a, k_major(w), out_dtype=torch.int32)
    assert torch.equal(raw.cpu(), reference.matmul(a.cpu(), k_major(w.cpu()), out_dtype="int32"))
    if scales == "tensor":
        a_scale, b_scale = torch.tensor(0.5), torch.tensor([0.25])
    else:
        a_scale, b_scale = torch.rand(M, generator=gen) + 0.5, torch.rand(N, generator=gen)
    kwargs = dict(a_scale=a_scale.to(DEVICE), b_scale=b_scale.to(DEVICE),
                  bias=rand((N,), torch.float32, gen, DEVICE), activation="relu")  # fmt: skip
    out = persistent(a, k_major(w), **kwargs)
    # exact int32 accumulator, the same fp32 epilogue operations: bit-equal
    assert torch.equal(out.cpu(), reference.matmul(a.cpu(), k_major(w.cpu()), **_cpu(kwargs)))


FP8_MODES = [("fast", 1), ("precise", 1), ("precise", 3)]


@pytest.mark.parametrize(("accumulation", "every"), FP8_MODES, ids=str)
@pytest.mark.parametrize(
    ("a_dtype", "b_dtype"),
    [(torch.float8_e4m3fn, torch.float8_e4m3fn), (torch.float8_e5m2, torch.float8_e4m3fn)],
    ids=str,
)
def test_float8_persistent_accumulation_modes(a_dtype, b_dtype, accumulation, every):
    M, N, Kd = 37, 40, 160  # 5 K tiles: promote-every-3 leaves a partial group
    gen = torch.Generator().manual_seed(8)
    a = rand((M, Kd), a_dtype, gen, DEVICE)
    w = rand((N, Kd), b_dtype, gen, DEVICE)
    kwargs = dict(a_scale=(torch.rand(M, generator=gen) + 0.5).to(DEVICE),
                  b_scale=(torch.rand(N, generator=gen) / 4 + 0.125).to(DEVICE),
                  bias=rand((N,), torch.float32, gen, DEVICE), out_dtype=torch.float32)  # fmt: skip
    with _triton_options.triton_options(fp8_accumulation=accumulation, fp8_promote_every=every):
        out = persistent(a, k_major(w), **kwargs)
    # Against the float64 oracle: the fp8 products are exact in fp32 (<= 2 x 4 significant
    # bits), so the fp32 accumulation rounds (|err| <= K * eps32 * sum_k |a_k b_k|, any order),
    # then the epilogue's two scale products and the bias add (<= 4 eps32 of the values).
    eps = torch.finfo(torch.float32).eps
    a64, b64 = a.cpu().double(), k_major(w.cpu()).double()
    scale = kwargs["a_scale"].cpu().double()[:, None] * kwargs["b_scale"].cpu().double()[None, :]
    bias = kwargs["bias"].cpu().double()
    oracle = (a64 @ b64) * scale + bias
    bound = Kd * eps * (a64.abs() @ b64.abs()) * scale + 4 * eps * (oracle.abs() + bias.abs())
    assert ((out.cpu().double() - oracle).abs() <= bound).all()


def test_persistent_output_feeds_autograd_free_paths_and_batched_a():
    gen = torch.Generator().manual_seed(9)
    a = rand((2, 3, 32), torch.bfloat16, gen, DEVICE)
    b = rand((32, 16), torch.bfloat16, gen, DEVICE)
    out = persistent(a, b)
    assert out.shape == (2, 3, 16)
    assert_close(out, reference.matmul(a.cpu(), b.cpu()), torch.bfloat16, k=32)


def test_forced_persistent_refuses_what_it_cannot_run():
    gen = torch.Generator().manual_seed(10)
    a = rand((8, 45), torch.float16, gen, DEVICE)  # row stride 90 bytes: not TMA-aligned
    b = rand((45, 16), torch.float16, gen, DEVICE)
    with pytest.raises(
        ValueError, match=r"TMA-compatible layouts.*Received: kind='float16', tma_ok=False"
    ):
        persistent(a, b)
    a32 = rand((8, 16), torch.float32, gen, DEVICE)
    with pytest.raises(ValueError, match=r"Received: kind='float32'"):
        persistent(a32, rand((16, 8), torch.float32, gen, DEVICE))
    from mpq.kernels import _triton_matmul

    a16 = rand((8, 16), torch.float16, gen, DEVICE)
    with (
        _triton_options.triton_options(kernel="persistent"),
        pytest.raises(ValueError, match=r"no `split_k` for the persistent kernel.*split_k=2"),
    ):
        _triton_matmul.matmul(a16, rand((16, 8), torch.float16, gen, DEVICE), split_k=2)


def test_launcher_refuses_non_tma_operands():
    from mpq.kernels import _triton_persistent

    a = torch.zeros(4, 9, dtype=torch.float16, device=DEVICE)
    b = torch.zeros(9, 8, dtype=torch.float16, device=DEVICE)
    with pytest.raises(ValueError, match=r"Expected TMA-compatible operands.*strides \(9, 1\)"):
        _triton_persistent.launch_persistent(a, b, torch.empty(4, 8, dtype=torch.float16))
    assert _triton_persistent.tma_compatible(torch.zeros(4, 8, dtype=torch.float16))
    assert not _triton_persistent.tma_compatible(torch.zeros(4, 8, dtype=torch.float16)[:, 1:])
    assert not _triton_persistent.tma_compatible(torch.zeros(2, 3, 8))


@settings(max_examples=10, deadline=None, derandomize=True)
@given(
    M=st.integers(0, 70),
    n8=st.integers(1, 9),
    k16=st.integers(1, 6),
    kind=st.sampled_from(["bfloat16", "float16", "int8", "e4m3"]),
    activation=st.sampled_from([None, "relu", "silu"]),
    seed=st.integers(0, 2**16),
)
def test_persistent_hypothesis_shapes(M, n8, k16, kind, activation, seed):
    # TMA-compatible shapes (N a multiple of 8, K of 16), any M including 0.
    N, Kd = 8 * n8, 16 * k16
    gen = torch.Generator().manual_seed(seed)
    dtype = {"e4m3": torch.float8_e4m3fn, "int8": torch.int8}.get(kind) or getattr(torch, kind)
    a = rand((M, Kd), dtype, gen, DEVICE)
    b = k_major(rand((N, Kd), dtype, gen, DEVICE))
    kwargs: dict = dict(bias=rand((N,), torch.float32, gen, DEVICE), activation=activation)
    if dtype in (torch.int8, torch.float8_e4m3fn):
        kwargs.update(a_scale=(torch.rand(M, generator=gen) / 100).to(DEVICE),
                      b_scale=(torch.rand(N, generator=gen) / 100).to(DEVICE))  # fmt: skip
    out = persistent(a, b, **kwargs)
    ref = reference.matmul(a.cpu(), b.cpu(), **_cpu(kwargs))
    if dtype == torch.int8 and activation != "silu":
        assert torch.equal(out.cpu(), ref)
    else:
        assert_close(out, ref, ref.dtype, k=Kd)
