"""The reference ops (CPU path and test oracle) against independent float64 numpy oracles."""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest
import torch

from mpq.kernels import reference
from tests.kernels._helpers import assert_close, k_major, pack_int4, rand

pytestmark = pytest.mark.kernels

_NP_FP8 = {torch.float8_e4m3fn: ml_dtypes.float8_e4m3fn, torch.float8_e5m2: ml_dtypes.float8_e5m2}


def to_f64(t: torch.Tensor) -> np.ndarray:
    """Exact float64 values of a tensor, through bit views for the 8-bit float formats."""
    if t.dtype in _NP_FP8:
        bits = t.contiguous().view(torch.uint8).numpy()
        return bits.view(_NP_FP8[t.dtype]).astype(np.float64)
    if t.dtype == torch.bfloat16:
        bits = t.contiguous().view(torch.int16).numpy()
        return bits.view(ml_dtypes.bfloat16).astype(np.float64)
    return t.numpy().astype(np.float64)


_erf = np.vectorize(math.erf)


def oracle_epilogue(acc, row_scale=None, col_scale=None, bias=None, activation=None):
    acc = np.asarray(acc, np.float64)
    if row_scale is not None:
        acc = acc * to_f64(row_scale).reshape(-1, 1)
    if col_scale is not None:
        acc = acc * to_f64(col_scale).reshape(1, -1)
    if bias is not None:
        acc = acc + to_f64(bias)
    if activation == "relu":
        acc = np.maximum(acc, 0.0)
    elif activation == "gelu":
        acc = 0.5 * acc * (1.0 + _erf(acc / math.sqrt(2.0)))
    elif activation == "silu":
        acc = acc / (1.0 + np.exp(-acc))
    return acc


def oracle_cast(x: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x)).to(dtype)


FLOAT_CASES = [
    (torch.float32, None),
    (torch.float16, None),
    (torch.bfloat16, None),
    (torch.bfloat16, torch.float32),
    (torch.float16, torch.bfloat16),
]


@pytest.mark.parametrize("activation", [None, "relu", "gelu", "silu"])
@pytest.mark.parametrize(("dtype", "out_dtype"), FLOAT_CASES)
@pytest.mark.parametrize("with_bias", [False, True])
def test_float_matmul_matches_float64_oracle(dtype, out_dtype, activation, with_bias):
    gen = torch.Generator().manual_seed(0)
    M, K, N = 7, 33, 5
    a, b = rand((M, K), dtype, gen), rand((K, N), dtype, gen)
    bias = rand((N,), torch.float32, gen) if with_bias else None
    out = reference.matmul(a, b, bias=bias, activation=activation, out_dtype=out_dtype)
    want = oracle_epilogue(to_f64(a) @ to_f64(b), bias=bias, activation=activation)
    expected_dtype = out_dtype or dtype
    assert_close(out, oracle_cast(want, expected_dtype), expected_dtype, k=K)


@pytest.mark.parametrize("a_dtype", [torch.float8_e4m3fn, torch.float8_e5m2])
@pytest.mark.parametrize("b_dtype", [torch.float8_e4m3fn, torch.float8_e5m2])
@pytest.mark.parametrize("scales", ["tensor", "rowcol", "none"])
def test_float8_matmul_matches_float64_oracle(a_dtype, b_dtype, scales):
    gen = torch.Generator().manual_seed(1)
    M, K, N = 6, 40, 9
    a = rand((M, K), a_dtype, gen)
    b = k_major(rand((N, K), b_dtype, gen))
    if scales == "tensor":
        a_scale, b_scale = torch.tensor(0.5), torch.tensor([0.25])
    elif scales == "rowcol":
        a_scale, b_scale = torch.rand(M, 1, generator=gen), torch.rand(N, generator=gen)
    else:
        a_scale = b_scale = None
    bias = rand((N,), torch.bfloat16, gen)
    out = reference.matmul(a, b, a_scale=a_scale, b_scale=b_scale, bias=bias, activation="silu")
    assert out.dtype == torch.bfloat16
    want = oracle_epilogue(to_f64(a) @ to_f64(b), a_scale, b_scale, bias, "silu")
    assert_close(out, oracle_cast(want, torch.bfloat16), torch.bfloat16, k=K)


def test_int8_matmul_is_exact():
    gen = torch.Generator().manual_seed(2)
    M, K, N = 5, 300, 4
    a, w = rand((M, K), torch.int8, gen), rand((N, K), torch.int8, gen)
    out = reference.matmul(a, k_major(w), out_dtype=torch.int32)
    want = a.numpy().astype(np.int64) @ w.numpy().astype(np.int64).T
    assert out.dtype == torch.int32
    np.testing.assert_array_equal(out.numpy(), want)


def test_int8_matmul_epilogue_order_is_exact():
    # The int32 accumulator is exact; the epilogue is the same float32 ops in the same order.
    gen = torch.Generator().manual_seed(3)
    M, K, N = 4, 64, 6
    a, w = rand((M, K), torch.int8, gen), rand((N, K), torch.int8, gen)
    a_scale, b_scale = torch.rand(M, generator=gen), torch.rand(1, N, generator=gen)
    bias = torch.randn(N, generator=gen)
    out = reference.matmul(
        a, k_major(w), a_scale=a_scale, b_scale=b_scale, bias=bias, out_dtype=torch.float32
    )
    acc = torch.from_numpy(a.numpy().astype(np.int64) @ w.numpy().astype(np.int64).T).float()
    want = ((acc * a_scale[:, None]) * b_scale) + bias
    assert torch.equal(out, want)


def test_int8_accumulator_wraps_like_int32():
    K = 131073  # K * 128 * 128 = 2**31 + 2**14 overflows int32
    a = torch.full((1, K), -128, dtype=torch.int8)
    w = torch.full((1, K), -128, dtype=torch.int8)
    out = reference.matmul(a, k_major(w), out_dtype=torch.int32)
    assert out.item() == -(2**31) + 2**14


def test_unpack_int4_every_nibble_pair():
    codes = torch.arange(-8, 8)
    lo, hi = torch.meshgrid(codes, codes, indexing="ij")
    q = torch.stack([lo.reshape(-1), hi.reshape(-1)])  # [K=2, N=256]: every (low, high) pair
    packed = pack_int4(q)
    assert packed.shape == (1, 256)
    assert torch.equal(reference.unpack_int4(packed, 2), q.to(torch.int8))
    assert torch.equal(reference.unpack_int4(packed.view(torch.uint8), 2), q.to(torch.int8))
    assert torch.equal(reference.unpack_int4(packed, 1), q[:1].to(torch.int8))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize(("K", "group_size", "with_zero"), [(9, None, False), (40, 16, True)])
def test_int4_matmul_matches_float64_oracle(dtype, K, group_size, with_zero):
    gen = torch.Generator().manual_seed(4)
    M, N = 3, 5
    a = rand((M, K), dtype, gen)
    q = torch.randint(-8, 8, (K, N), generator=gen)
    G = 1 if group_size is None else -(-K // group_size)
    scale = torch.rand((G, N) if group_size else (N,), generator=gen) + 0.1
    zero = torch.randint(-8, 8, scale.shape, generator=gen, dtype=torch.int8) if with_zero else None
    bias = torch.randn(N, generator=gen)
    out = reference.matmul_int4(
        a, pack_int4(q), scale, b_zero=zero, group_size=group_size, bias=bias, activation="relu"
    )
    # Oracle: dequantize in float64, round once to a.dtype (as the kernel does), multiply in f64.
    gidx = np.arange(K) // (group_size or K)
    s = scale.numpy().reshape(G, N).astype(np.float64)[gidx]
    z = 0.0 if zero is None else zero.numpy().reshape(G, N).astype(np.float64)[gidx]
    w = to_f64(torch.from_numpy((q.numpy() - z) * s).to(dtype))
    want = oracle_epilogue(to_f64(a) @ w, bias=bias, activation="relu")
    assert_close(out, oracle_cast(want, dtype), dtype, k=K)


def oracle_conv2d(x, w, stride, pad, dilation, groups):
    """Direct float64 convolution on NHWC/OHWI arrays; pad = (top, bottom, left, right)."""
    n, h, wd, _ = x.shape
    oc, kh, kw, cg = w.shape
    xp = np.pad(x, ((0, 0), (pad[0], pad[1]), (pad[2], pad[3]), (0, 0)))
    oh = (h + pad[0] + pad[1] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (wd + pad[2] + pad[3] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    out = np.zeros((n, oh, ow, oc))
    ocg = oc // groups
    for i in range(kh):
        for j in range(kw):
            rows = xp[:, i * dilation[0] :: stride[0], :, :][:, :oh]
            patch = rows[:, :, j * dilation[1] :: stride[1], :][:, :, :ow]  # [n, oh, ow, c]
            for g in range(groups):
                xs = patch[..., g * cg : (g + 1) * cg]
                ws = w[g * ocg : (g + 1) * ocg, i, j, :]  # [ocg, cg]
                out[..., g * ocg : (g + 1) * ocg] += xs @ ws.T
    return out


CONV_CASES = [
    # (N, H, W, C, OC, KH, KW, stride, padding, dilation, groups)
    (2, 7, 6, 3, 4, 3, 3, 1, 1, 1, 1),
    (1, 9, 8, 4, 6, 3, 3, 2, ((0, 1), (1, 0)), 1, 2),
    (1, 8, 9, 4, 4, 3, 3, (1, 2), (2, 1), 2, 4),
    (1, 5, 5, 6, 3, 1, 1, 1, 0, 1, 1),
    (1, 9, 9, 2, 3, 7, 7, 1, 3, 1, 1),
]


@pytest.mark.parametrize("case", CONV_CASES)
@pytest.mark.parametrize(
    ("dtype", "activation"),
    [(torch.float32, "gelu"), (torch.bfloat16, None), (torch.float8_e4m3fn, "relu")],
)
def test_conv2d_matches_float64_oracle(case, dtype, activation):
    gen = torch.Generator().manual_seed(5)
    n, h, wd, c, oc, kh, kw, stride, padding, dilation, groups = case
    x = rand((n, h, wd, c), dtype, gen)
    w = rand((oc, kh, kw, c // groups), dtype, gen)
    bias = torch.randn(oc, generator=gen)
    scales = {}
    if dtype == torch.float8_e4m3fn:
        scales = {"x_scale": torch.tensor(0.5), "w_scale": torch.rand(oc, generator=gen)}
    out = reference.conv2d(
        x,
        w,
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
        bias=bias,
        activation=activation,
        **scales,
    )
    pair = lambda v: (v, v) if isinstance(v, int) else v  # noqa: E731
    pad = padding
    if isinstance(padding, int) or isinstance(padding[0], int):
        ph, pw = pair(padding)
        pad = ((ph, ph), (pw, pw))
    pad = (*pad[0], *pad[1])
    acc = oracle_conv2d(to_f64(x), to_f64(w), pair(stride), pad, pair(dilation), groups)
    want = oracle_epilogue(
        acc.reshape(-1, oc), scales.get("x_scale"), scales.get("w_scale"), bias, activation
    )
    out_dtype = torch.bfloat16 if dtype == torch.float8_e4m3fn else dtype
    want = oracle_cast(want.reshape(out.shape), out_dtype)
    assert out.is_contiguous()
    assert_close(out, want, out_dtype, k=kh * kw * c // groups)


def test_int8_conv2d_is_exact():
    gen = torch.Generator().manual_seed(6)
    x = rand((2, 6, 5, 8), torch.int8, gen)
    w = rand((6, 3, 3, 4), torch.int8, gen)
    out = reference.conv2d(x, w, stride=2, padding=1, groups=2, out_dtype=torch.int32)
    want = oracle_conv2d(
        x.numpy().astype(np.float64), w.numpy().astype(np.float64), (2, 2), (1, 1, 1, 1), (1, 1), 2
    )
    np.testing.assert_array_equal(out.numpy(), want.astype(np.int64))
