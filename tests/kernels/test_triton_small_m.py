"""Small-M (M <= 16) split-K weight-streaming kernel against the reference and float64."""

from __future__ import annotations

import pytest
import torch

import mpq.kernels as K
from mpq.kernels import _triton_options, reference
from tests.kernels._helpers import DEVICE, assert_close, pack_int4, rand, requires_triton_device

pytestmark = [pytest.mark.kernels, requires_triton_device]


def small_m():
    return _triton_options.triton_options(kernel="small_m")


@pytest.mark.parametrize("split_k", [None, 3])
@pytest.mark.parametrize("M", [1, 5, 16])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_float_small_m_matches_reference(dtype, M, split_k):
    from mpq.kernels import _triton_matmul

    N, Kd = 37, 101  # odd N and K: partial column block, partial K tile in the last split
    gen = torch.Generator().manual_seed(M + (split_k or 0))
    a, b = rand((M, Kd), dtype, gen, DEVICE), rand((Kd, N), dtype, gen, DEVICE)
    kwargs = dict(bias=rand((N,), dtype, gen, DEVICE), activation="silu")
    with K.use_backend("triton"), small_m():
        out = _triton_matmul.matmul(a, b, split_k=split_k, **kwargs)
    ref = reference.matmul(a.cpu(), b.cpu(), **{k: v.cpu() if isinstance(v, torch.Tensor) else v
                                              for k, v in kwargs.items()})  # fmt: skip
    assert_close(out, ref, dtype, k=Kd)


INT4_CASES = [(1, 29, 45, None, False), (5, 33, 64, 32, True), (16, 10, 31, 7, True)]


@pytest.mark.parametrize("case", INT4_CASES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_int4_small_m_matches_reference(dtype, case):
    M, N, Kd, group_size, with_zero = case
    gen = torch.Generator().manual_seed(M + N + Kd)
    a = rand((M, Kd), dtype, gen, DEVICE)
    q = torch.randint(-8, 8, (Kd, N), generator=gen)
    groups = 1 if group_size is None else -(-Kd // group_size)
    scale = torch.rand((groups, N) if group_size else (N,), generator=gen) / 4
    zero = torch.randint(-8, 8, scale.shape, generator=gen, dtype=torch.int8) if with_zero else None
    packed = pack_int4(q)
    kwargs = dict(b_zero=zero, group_size=group_size, bias=rand((N,), dtype, gen),
                  activation="relu")  # fmt: skip
    ref = reference.matmul_int4(a.cpu(), packed, scale, **kwargs)
    dev = {k: v.to(DEVICE) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    for b_packed in (packed, packed.t().contiguous().t()):
        with K.use_backend("triton"), small_m():
            out = K.matmul_int4(a, b_packed.to(DEVICE), scale.to(DEVICE), **dev)
        assert_close(out, ref, dtype, k=Kd)


def _int8_oracle(a, q, scale, zero, group_size, bias, activation):
    """Float64 oracle of the weight-only int8 matmul: w = (q - z) * s in float64, rounded once
    to a.dtype (the kernel's dequantization), then the float reference matmul (fp32
    accumulation of exact products, the epilogue, one cast)."""
    Kd = q.shape[0]
    rows = torch.arange(Kd) // (group_size or Kd)
    s = scale.reshape(-1, q.shape[1]).double()[rows]
    z = 0.0 if zero is None else zero.reshape(-1, q.shape[1]).double()[rows]
    w = ((q.double() - z) * s).to(a.dtype)
    return reference.matmul(a, w, bias=bias, activation=activation)


@pytest.mark.parametrize("split_k", [None, 2])
@pytest.mark.parametrize(
    ("M", "group_size", "with_zero", "layout"),
    [(1, None, False, "k_major"), (7, 16, True, "row_major"), (16, 5, True, "k_major")],
    ids=str,
)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_int8_weight_only_small_m(dtype, M, group_size, with_zero, layout, split_k):
    from mpq.kernels import _triton_small_m

    N, Kd = 23, 70
    gen = torch.Generator().manual_seed(M + N + (group_size or 0))
    a = rand((M, Kd), dtype, gen, DEVICE)
    q = torch.randint(-128, 128, (Kd, N), generator=gen, dtype=torch.int8)
    groups = 1 if group_size is None else -(-Kd // group_size)
    scale = torch.rand((groups, N) if group_size else (N,), generator=gen) / 64
    zero = torch.randint(-4, 4, scale.shape, generator=gen).float() if with_zero else None
    bias = rand((N,), torch.float32, gen)
    b_q = q.t().contiguous().t() if layout == "k_major" else q
    out = _triton_small_m.matmul_int8_weight_only(
        a, b_q.to(DEVICE), scale.to(DEVICE), b_zero=None if zero is None else zero.to(DEVICE),
        group_size=group_size, bias=bias.to(DEVICE), activation="gelu", split_k=split_k,
    )  # fmt: skip
    want = _int8_oracle(a.cpu(), q, scale, zero, group_size, bias, "gelu")
    assert out.dtype == dtype
    assert_close(out, want, dtype, k=Kd)


def test_int8_weight_only_errors():
    from mpq.kernels import _triton_small_m

    a = torch.zeros(2, 8, dtype=torch.float16, device=DEVICE)
    q = torch.zeros(8, 4, dtype=torch.int8, device=DEVICE)
    s = torch.ones(4, device=DEVICE)
    with pytest.raises(
        ValueError,
        match=r"2-D int8 `b_q` of shape \[K, N\].*b_q=tensor of shape \[8, 4\], dtype torch.float32",
    ):
        _triton_small_m.matmul_int8_weight_only(a, q.float(), s)
    with pytest.raises(ValueError, match=r"K = a.shape\[-1\].*b_q=tensor of shape \[7, 4\]"):
        _triton_small_m.matmul_int8_weight_only(a, q[:7], s)
    with pytest.raises(ValueError, match=r"at most 16 rows.*\(M=17\)"):
        _triton_small_m.matmul_int8_weight_only(torch.zeros(17, 8, dtype=torch.float16), q, s)
    with pytest.raises(ValueError, match=r"per output channel \(\[4\] or \[1, 4\]"):
        _triton_small_m.matmul_int8_weight_only(a, q, torch.ones(3, device=DEVICE))
    with pytest.raises(ValueError, match=r"same device.*b_q on meta"):
        _triton_small_m.matmul_int8_weight_only(a, q.to("meta"), s)


def test_forced_small_m_refuses_more_rows_and_8_bit_operands():
    gen = torch.Generator().manual_seed(3)
    a = rand((17, 32), torch.float16, gen, DEVICE)
    with (
        K.use_backend("triton"),
        small_m(),
        pytest.raises(ValueError, match=r"M <= 16 .*Received: M=17, kind='float16'"),
    ):
        K.matmul(a, rand((32, 8), torch.float16, gen, DEVICE))
    a8 = rand((2, 32), torch.int8, gen, DEVICE)
    w8 = rand((8, 32), torch.int8, gen, DEVICE)
    with (
        K.use_backend("triton"),
        small_m(),
        pytest.raises(ValueError, match=r"Received: M=2, kind='int8'"),
    ):
        K.matmul(a8, w8.t())
